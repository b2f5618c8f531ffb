// Preprocess: u8 frames → normalised FP16 NHWC tensors, with crop, resize, flip and
// jitter, from packed RGB (preprocess_u8_f16) or from I420 planes as the decoder gives
// them (preprocess_yuv420_f16), which skips the CPU colour conversion altogether.
//
// Layout. RGB src: N×H×W×3 u8 (FFmpeg's packed RGB24). I420 src: per frame a H×W Y plane
// then U and V planes of ⌈H/2⌉×⌈W/2⌉, frames back to back. crops: N×4 int (y0, x0,
// height, width) — the face or centre box inside each frame. flips: N u8, 1 mirrors that
// frame horizontally. jitter: N×2 float (brightness, contrast): v ← (v − ½)·contrast + ½ +
// brightness on 0..1 values. dst: N×S×S×3 FP16. mean/std: 3 floats each, in 0..1 units.
// The CPU twin is src/backend/cpu/preprocess.rs: same arithmetic, same order.
//
// One thread per output pixel computes all three channels: bilinear sampling reads a
// 2×2 neighbourhood of 3-byte pixels, so per-channel threads would fetch the same bytes
// three times. For I420, luma is sampled at the pixel's taps and chroma bilinearly at the
// same point of its half-size plane (centre-sited), then BT.601 limited range → RGB,
// clamped to 0..255 as FFmpeg's converter clamps. The op is bandwidth-bound (RGB: 12
// bytes read, 6 written per pixel; I420: 6 read); a later version stages source rows in
// shared memory and writes 128-bit vectors.
#include "common.cuh"

struct Taps {
    int iy, iy1, ix, ix1;
    float fy, fx, sy, sx;
};

// Taps of output pixel (oy, ox) in a bh×bw crop (pixel centres to pixel centres, clamped).
__device__ __forceinline__ Taps crop_taps(int oy, int ox, int bh, int bw, int S) {
    Taps t;
    t.sy = fminf(fmaxf((oy + 0.5f) * bh / S - 0.5f, 0.0f), (float)(bh - 1));
    t.sx = fminf(fmaxf((ox + 0.5f) * bw / S - 0.5f, 0.0f), (float)(bw - 1));
    t.iy = (int)t.sy;
    t.ix = (int)t.sx;
    t.iy1 = min(t.iy + 1, bh - 1);
    t.ix1 = min(t.ix + 1, bw - 1);
    t.fy = t.sy - t.iy;
    t.fx = t.sx - t.ix;
    return t;
}

template <typename At>
__device__ __forceinline__ float lerp2(const Taps& t, At at) {
    float top = at(t.iy, t.ix) * (1.0f - t.fx) + at(t.iy, t.ix1) * t.fx;
    float bottom = at(t.iy1, t.ix) * (1.0f - t.fx) + at(t.iy1, t.ix1) * t.fx;
    return top * (1.0f - t.fy) + bottom * t.fy;
}

// Jitter and normalise one RGB value (0..255) into three halves.
__device__ __forceinline__ void finish(const float rgb[3], float brightness, float contrast,
                                       const float mean[3], const float inv_std[3], __half* out) {
    for (int c = 0; c < 3; ++c) {
        float v = rgb[c] * (1.0f / 255.0f);
        v = (v - 0.5f) * contrast + 0.5f + brightness;
        out[c] = __float2half_rn((v - mean[c]) * inv_std[c]);
    }
}

// The output pixel of thread `idx`: frame, row, column (column already flipped).
__device__ __forceinline__ bool locate(long long idx, int N, int S, const unsigned char* flips, int& n,
                                      int& oy, int& ox) {
    if (idx >= (long long)N * S * S) return false;
    ox = (int)(idx % S);
    oy = (int)((idx / S) % S);
    n = (int)(idx / ((long long)S * S));
    if (flips[n]) ox = S - 1 - ox;
    return true;
}

extern "C" __global__ void preprocess_u8_f16(const unsigned char* __restrict__ src, int N, int H, int W,
                                             const int* __restrict__ crops,
                                             const unsigned char* __restrict__ flips,
                                             const float* __restrict__ jitter,
                                             __half* __restrict__ dst, int S, float mean_r, float mean_g,
                                             float mean_b, float std_r, float std_g, float std_b) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    int n, oy, ox;
    if (!locate(idx, N, S, flips, n, oy, ox)) return;
    const int* box = crops + 4 * n;
    int y0 = box[0], x0 = box[1];
    Taps t = crop_taps(oy, ox, box[2], box[3], S);
    const unsigned char* frame = src + (long long)n * H * W * 3;
    float rgb[3];
    for (int c = 0; c < 3; ++c) {
        rgb[c] = lerp2(t, [&](int yy, int xx) {
            int gy = min(y0 + yy, H - 1), gx = min(x0 + xx, W - 1);
            return (float)frame[((long long)gy * W + gx) * 3 + c];
        });
    }
    float mean[3] = {mean_r, mean_g, mean_b}, inv_std[3] = {1.0f / std_r, 1.0f / std_g, 1.0f / std_b};
    finish(rgb, jitter[2 * n], jitter[2 * n + 1], mean, inv_std, dst + idx * 3);
}

extern "C" __global__ void preprocess_yuv420_f16(const unsigned char* __restrict__ src, int N, int H, int W,
                                                 const int* __restrict__ crops,
                                                 const unsigned char* __restrict__ flips,
                                                 const float* __restrict__ jitter,
                                                 __half* __restrict__ dst, int S, float mean_r,
                                                 float mean_g, float mean_b, float std_r, float std_g,
                                                 float std_b) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    int n, oy, ox;
    if (!locate(idx, N, S, flips, n, oy, ox)) return;
    const int* box = crops + 4 * n;
    int y0 = box[0], x0 = box[1];
    Taps t = crop_taps(oy, ox, box[2], box[3], S);
    int CH = (H + 1) / 2, CW = (W + 1) / 2;
    const unsigned char* luma = src + (long long)n * ((long long)H * W + 2LL * CH * CW);
    const unsigned char* u_plane = luma + (long long)H * W;
    const unsigned char* v_plane = u_plane + (long long)CH * CW;
    float y = lerp2(t, [&](int yy, int xx) {
        return (float)luma[(long long)min(y0 + yy, H - 1) * W + min(x0 + xx, W - 1)];
    });
    float cy = fminf(fmaxf(((y0 + t.sy) + 0.5f) * 0.5f - 0.5f, 0.0f), (float)(CH - 1));
    float cx = fminf(fmaxf(((x0 + t.sx) + 0.5f) * 0.5f - 0.5f, 0.0f), (float)(CW - 1));
    Taps c;
    c.iy = (int)cy;
    c.ix = (int)cx;
    c.iy1 = min(c.iy + 1, CH - 1);
    c.ix1 = min(c.ix + 1, CW - 1);
    c.fy = cy - c.iy;
    c.fx = cx - c.ix;
    float u = lerp2(c, [&](int yy, int xx) { return (float)u_plane[(long long)yy * CW + xx]; });
    float v = lerp2(c, [&](int yy, int xx) { return (float)v_plane[(long long)yy * CW + xx]; });
    float yl = 1.164383f * (y - 16.0f);
    u -= 128.0f;
    v -= 128.0f;
    float rgb[3] = {yl + 1.596027f * v, yl - 0.391762f * u - 0.812968f * v, yl + 2.017232f * u};
    for (int k = 0; k < 3; ++k) rgb[k] = fminf(fmaxf(rgb[k], 0.0f), 255.0f);
    float mean[3] = {mean_r, mean_g, mean_b}, inv_std[3] = {1.0f / std_r, 1.0f / std_g, 1.0f / std_b};
    finish(rgb, jitter[2 * n], jitter[2 * n + 1], mean, inv_std, dst + idx * 3);
}
