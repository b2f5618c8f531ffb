"""The DFDC-winning solution's frame sampling as a yardstick for `cargo bench --bench decode`:
OpenCV's VideoCapture reads the clip with grab() on every frame and retrieve() on the wanted
ones (its FFmpeg backend, its own threads). Prints one JSON object: the CPU-seconds (user +
system of the whole process, every thread) and wall seconds of the reading alone, Python's
start-up and the import excluded, and the frames retrieved.

    python benches/opencv_sample.py CLIP --frames 0,9,19,...
"""

import argparse
import json
import resource
import time

import cv2


def cpu_seconds():
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def main():
    p = argparse.ArgumentParser()
    p.add_argument("clip")
    p.add_argument("--frames", required=True, help="comma-separated frame indices to retrieve")
    a = p.parse_args()
    wanted = {int(i) for i in a.frames.split(",")}
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    cap = cv2.VideoCapture(a.clip)
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    retrieved = 0
    for i in range(total):
        if not cap.grab():
            break
        if i in wanted:
            ok, frame = cap.retrieve()
            retrieved += int(ok and frame is not None)
    cap.release()
    print(json.dumps({
        "cpu_s": cpu_seconds() - cpu0,
        "wall_s": time.perf_counter() - wall0,
        "frames": retrieved,
        "opencv": cv2.__version__,
    }))


if __name__ == "__main__":
    main()
