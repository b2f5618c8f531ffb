// Preprocess: u8 RGB frames → normalised FP16 NHWC tensors, with crop, resize and flip.
//
// Layout. src: N×H×W×3 u8 (decoded frames, NHWC as FFmpeg's packed RGB24 gives them).
// crops: N×4 int (y0, x0, height, width) — the face or centre box inside each frame.
// flips: N u8, 1 mirrors that frame horizontally (augmentation). jitter: N×2 float
// (brightness, contrast): v ← (v − ½)·contrast + ½ + brightness on 0..1 values.
// dst: N×S×S×3 FP16. mean/std: 3 floats each, in 0..1 units (ImageNet by default).
// The CPU twin is src/backend/cpu/preprocess.rs: same arithmetic, same order.
//
// One thread per output pixel computes all three channels: bilinear sampling reads a
// 2×2 neighbourhood of 3-byte pixels, so per-channel threads would fetch the same bytes
// three times. The op is bandwidth-bound (12 bytes read, 6 written per pixel); a later
// version stages source rows in shared memory and writes 128-bit vectors.
#include "common.cuh"

extern "C" __global__ void preprocess_u8_f16(const unsigned char* __restrict__ src, int N, int H, int W,
                                             const int* __restrict__ crops,
                                             const unsigned char* __restrict__ flips,
                                             const float* __restrict__ jitter,
                                             __half* __restrict__ dst, int S, float mean_r, float mean_g,
                                             float mean_b, float std_r, float std_g, float std_b) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)N * S * S) return;
    int ox = (int)(idx % S);
    int oy = (int)((idx / S) % S);
    int n = (int)(idx / ((long long)S * S));
    const int* box = crops + 4 * n;
    int y0 = box[0], x0 = box[1], bh = box[2], bw = box[3];
    if (flips[n]) ox = S - 1 - ox;
    // Pixel centres map to pixel centres (align_corners = false), clamped at the edges.
    float sy = fminf(fmaxf((oy + 0.5f) * bh / S - 0.5f, 0.0f), (float)(bh - 1));
    float sx = fminf(fmaxf((ox + 0.5f) * bw / S - 0.5f, 0.0f), (float)(bw - 1));
    int iy = (int)sy, ix = (int)sx;
    int iy1 = min(iy + 1, bh - 1), ix1 = min(ix + 1, bw - 1);
    float fy = sy - iy, fx = sx - ix;
    const unsigned char* frame = src + (long long)n * H * W * 3;
    auto at = [&](int yy, int xx, int c) {
        int gy = min(max(y0 + yy, 0), H - 1), gx = min(max(x0 + xx, 0), W - 1);
        return (float)frame[((long long)gy * W + gx) * 3 + c];
    };
    float mean[3] = {mean_r, mean_g, mean_b}, inv_std[3] = {1.0f / std_r, 1.0f / std_g, 1.0f / std_b};
    float brightness = jitter[2 * n], contrast = jitter[2 * n + 1];
    __half* out = dst + idx * 3;
    for (int c = 0; c < 3; ++c) {
        float top = at(iy, ix, c) * (1.0f - fx) + at(iy, ix1, c) * fx;
        float bottom = at(iy1, ix, c) * (1.0f - fx) + at(iy1, ix1, c) * fx;
        float v = (top * (1.0f - fy) + bottom * fy) * (1.0f / 255.0f);
        v = (v - 0.5f) * contrast + 0.5f + brightness;
        out[c] = __float2half_rn((v - mean[c]) * inv_std[c]);
    }
}
