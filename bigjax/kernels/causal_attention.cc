// Fused causal softmax attention for XLA:CPU (flash-attention style), called through XLA FFI.
//
// Forward, per (batch, query head): each block of 64 queries visits the key blocks up to the
// diagonal once with an online softmax, so the T x T weights are never stored; the row
// log-sum-exp is kept for the backward pass, which recomputes each block's weights, per
// (batch, key/value head) so that dK and dV have one writer. Queries, keys and values are read
// where the fused projection wrote them (no slices, no transposes in XLA). Work items run on
// XLA's intra-op thread pool; the calling thread takes items too, so nothing waits on a pool
// that is busy elsewhere.
//
// Shapes: qkv (B, T, G, R + 2, K) as the fused projection writes it: per key/value head g its
// R query heads, its key and its value (H = G * R query heads); out (B, T, H, K); lse (B, H, T).
// T is a multiple of 64 and K one of 16, 32, 64, 128.
//
// With segment ids (B, T) int32 (the *Segments* handlers), a query sees only the keys of its own
// segment, so documents packed into one row stay apart: a pair of blocks whose segments cannot
// meet is skipped, a pair within one segment runs as without ids, and only a pair across a
// boundary is masked element by element.
//
// With a window W > 0 (the `window` attribute; 0: none), query t sees only keys t - W < s <= t:
// key blocks wholly before every query's window are never visited (work ~ T * W), and only
// blocks that straddle a window's start are masked element by element.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <thread>
#include <type_traits>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kBlock = 64;
typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

inline v16 load(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void store(float* p, v16 v) { std::memcpy(p, &v, sizeof(v)); }

inline v16 splat(float x) { return v16{} + x; }

// Lane-wise maximum, written as a loop the compiler turns into one vector instruction (GCC and
// Clang treat vector conditionals differently; this form means the same to both).
inline v16 vmax(v16 a, v16 b) {
  v16 r;
  for (int i = 0; i < 16; ++i) r[i] = a[i] > b[i] ? a[i] : b[i];
  return r;
}

// A zero-filled float array on 64-byte boundaries (vector loads never straddle cache lines).
struct Aligned {
  explicit Aligned(int64_t n)
      : data(static_cast<float*>(std::aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64))) {
    std::fill(data, data + n, 0.0f);
  }
  ~Aligned() { std::free(data); }
  Aligned(const Aligned&) = delete;
  Aligned& operator=(const Aligned&) = delete;
  float* data;
};

// exp(x) for x <= 0 (softmax arguments): 2^n * p(r) with |r| <= ln2 / 2, relative error ~1e-7.
inline v16 vexp(v16 x) {
  x = vmax(x, splat(-87.0f));
  const v16 n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;  // round to nearest
  const v16 r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  v16 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const v16i bits = (__builtin_convertvector(n, v16i) + 127) << 23;
  v16 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float hmax(v16 v) {
  float m = v[0];
  for (int i = 1; i < 16; ++i) m = std::max(m, v[i]);
  return m;
}

inline float hsum(v16 v) {
  float s = 0.0f;
  for (int i = 0; i < 16; ++i) s += v[i];
  return s;
}

// c (rows x 16*NV, row-major) = or += a @ b, where a(m, d) = a[m * a_row + d * a_col] and row d
// of b starts at b + d * ldb. Tiles of kRows rows keep kRows * NV accumulators in registers.
template <int NV>
void gemm(float* __restrict c, const float* __restrict a, int64_t a_row, int64_t a_col,
          const float* __restrict b, int64_t ldb, int depth, int rows, bool accumulate) {
  constexpr int kRows = NV >= 8 ? 2 : (NV == 4 ? 4 : 8);
  constexpr int kWidth = 16 * NV;
  for (int m0 = 0; m0 < rows; m0 += kRows) {
    v16 acc[kRows][NV];
#pragma GCC unroll 8
    for (int i = 0; i < kRows; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j)
        acc[i][j] = accumulate ? load(c + (m0 + i) * kWidth + 16 * j) : v16{};
    for (int d = 0; d < depth; ++d) {
      v16 bv[NV];
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) bv[j] = load(b + d * ldb + 16 * j);
#pragma GCC unroll 8
      for (int i = 0; i < kRows; ++i) {
        const float s = a[(m0 + i) * a_row + d * a_col];
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) acc[i][j] += s * bv[j];
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < kRows; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) store(c + (m0 + i) * kWidth + 16 * j, acc[i][j]);
  }
}

// Runs body(0..items-1) on the calling thread and up to threads - 1 pool tasks. Items are
// claimed from a shared counter; the caller waits only for items already claimed.
void parallel_for(ffi::ThreadPool& pool, int64_t items, const std::function<void(int64_t)>& body) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto state = std::make_shared<State>();
  auto work = [state, items, &body]() {
    for (int64_t i; (i = state->next.fetch_add(1)) < items;) {
      body(i);
      state->done.fetch_add(1);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), items) - 1;
  for (int64_t t = 0; t < helpers; ++t) {
    // A task that starts after the work is gone returns at once; it only touches `state`.
    pool.Schedule([state, items, work]() {
      if (state->next.load() < items) work();
    });
  }
  work();
  while (state->done.load() < items) std::this_thread::yield();
}

struct Dims {
  int64_t batch, length, groups, repeats, width;
  int64_t heads() const { return groups * repeats; }
  int64_t token_stride() const { return groups * (repeats + 2) * width; }
};

// The rows of one head: row t of batch b starts at base + (b * length + t) * stride.
template <typename T>
struct Rows {
  T* base;
  int64_t stride, length;
  T* operator()(int64_t b, int64_t t) const { return base + (b * length + t) * stride; }
};

// Query head h, key or value of group g (slot R or R + 1) inside a packed qkv array.
template <typename T>
Rows<T> packed(T* qkv, const Dims& dims, int64_t group, int64_t slot) {
  return {qkv + (group * (dims.repeats + 2) + slot) * dims.width, dims.token_stride(),
          dims.length};
}

template <typename T>
Rows<T> query(T* qkv, const Dims& dims, int64_t h) {
  return packed(qkv, dims, h / dims.repeats, h % dims.repeats);
}

template <typename T>
Rows<T> head(T* out, const Dims& dims, int64_t h) {
  return {out + h * dims.width, dims.heads() * dims.width, dims.length};
}

// Copies the T rows of one head into dst (T x K), times `scale`.
void copy_rows(float* dst, Rows<const float> src, int64_t b, int width, float scale) {
  for (int64_t t = 0; t < src.length; ++t) {
    const float* row = src(b, t);
    for (int d = 0; d < width; ++d) dst[t * width + d] = row[d] * scale;
  }
}

// Copies the T rows of one head transposed, block by block, into dst: key block j is the
// contiguous K x 64 tile at dst + j * K * 64 (contiguous tiles stay in L1; a K x T array would
// alias its cache sets).
void copy_cols(float* dst, Rows<const float> src, int64_t b, int width) {
  for (int64_t t = 0; t < src.length; ++t) {
    const float* row = src(b, t);
    float* tile = dst + (t / kBlock) * width * kBlock + t % kBlock;
    for (int d = 0; d < width; ++d) tile[d * kBlock] = row[d];
  }
}

// Row maxima of a 64 x 64 block of scores; in a diagonal block, keys after the query are set to
// -inf first (they must not count).
void row_max(float* s, float* out, bool diagonal) {
  for (int r = 0; r < kBlock; ++r) {
    float* row = s + r * kBlock;
    if (diagonal) std::fill(row + r + 1, row + kBlock, -INFINITY);
    v16 m = load(row);
    for (int j = 16; j < kBlock; j += 16) {
      const v16 x = load(row + j);
      m = vmax(m, x);
    }
    out[r] = hmax(m);
  }
}

// P = exp(S - shift[row]) in place, with the row sums; in a diagonal block, keys after the
// query are zeroed.
void exponentiate(float* s, const float* shift, bool diagonal, float* sums) {
  for (int r = 0; r < kBlock; ++r) {
    float* row = s + r * kBlock;
    v16 sum{};
    for (int j = 0; j < kBlock; j += 16) {
      const v16 p = vexp(load(row + j) - shift[r]);
      store(row + j, p);
      sum += p;
    }
    if (diagonal) std::fill(row + r + 1, row + kBlock, 0.0f);
    if (sums) sums[r] = diagonal ? std::accumulate(row, row + r + 1, 0.0f) : hsum(sum);
  }
}

// The smallest and largest segment id of each block of 64 tokens of one row.
struct BlockRange {
  int32_t low, high;
};

void block_ranges(const int32_t* segments, int64_t blocks, BlockRange* ranges) {
  for (int64_t j = 0; j < blocks; ++j) {
    const int32_t* block = segments + j * kBlock;
    const auto [low, high] = std::minmax_element(block, block + kBlock);
    ranges[j] = {*low, *high};
  }
}

enum class Overlap { kNone, kWhole, kPartial };

// Whether queries of one block may see keys of another: not at all (no segment in common),
// wholly (one segment on both sides), or partially (masked element by element).
inline Overlap overlap(BlockRange q, BlockRange k) {
  if (q.high < k.low || k.high < q.low) return Overlap::kNone;
  if (q.low == q.high && k.low == k.high) return Overlap::kWhole;
  return Overlap::kPartial;
}

// Sets the entries of a 64 x 64 block whose query and key segments differ to `value`.
void mask_segments(float* s, const int32_t* query_segments, const int32_t* key_segments,
                   float value) {
  for (int r = 0; r < kBlock; ++r) {
    float* row = s + r * kBlock;
    for (int j = 0; j < kBlock; ++j)
      if (query_segments[r] != key_segments[j]) row[j] = value;
  }
}

// Sets the entries of a 64 x 64 block, its keys `distance` blocks before its queries, where the
// key lies before the query's window (s <= t - W) to `value`.
void mask_window(float* s, int64_t distance, int64_t window, float value) {
  for (int r = 0; r < kBlock; ++r) {
    const int64_t hidden = std::clamp<int64_t>(distance * kBlock + r - window + 1, 0, kBlock);
    std::fill(s + r * kBlock, s + r * kBlock + hidden, value);
  }
}

// Which keys of one row the queries of the same row may see beyond causality: those of their
// own segment (when segment ids are given) within their window (when W > 0).
struct Visibility {
  Visibility(const int32_t* segments, int64_t b, int64_t length, int64_t window)
      : segments(segments ? segments + b * length : nullptr),
        ranges(new BlockRange[length / kBlock]),
        blocks(length / kBlock),
        window(window),
        reach(window > 0 ? (window + kBlock - 2) / kBlock : blocks) {
    if (this->segments) block_ranges(this->segments, blocks, ranges.get());
  }

  // Key blocks before this one lie wholly before the windows of block qb's queries.
  int64_t first_key_block(int64_t qb) const { return std::max<int64_t>(0, qb - reach); }

  // Query blocks from this one on have windows that start wholly after key block kb.
  int64_t query_blocks_end(int64_t kb) const { return std::min(blocks, kb + reach + 1); }

  // How the queries of block qb see the keys of block kb (within reach): not at all (no
  // segment in common), or with the segment and the window masks each applied only where the
  // pair straddles a boundary.
  struct Pair {
    bool seen, masked_by_segment, masked_by_window;
    bool partial() const { return masked_by_segment || masked_by_window; }
  };

  Pair pair(int64_t qb, int64_t kb) const {
    const Overlap seen = segments ? overlap(ranges[qb], ranges[kb]) : Overlap::kWhole;
    return {seen != Overlap::kNone, seen == Overlap::kPartial,
            window > 0 && (qb - kb + 1) * kBlock > window};
  }

  // Sets the entries of the 64 x 64 block of scores of (qb, kb) that `pair` hides to `value`.
  void mask(float* s, Pair pair, int64_t qb, int64_t kb, float value) const {
    if (pair.masked_by_segment)
      mask_segments(s, segments + qb * kBlock, segments + kb * kBlock, value);
    if (pair.masked_by_window) mask_window(s, qb - kb, window, value);
  }

  const int32_t* segments;  // this row's ids, or nullptr
  std::unique_ptr<BlockRange[]> ranges;
  int64_t blocks, window;
  int64_t reach;  // the farthest block distance a query's window reaches back
};

void row_sums(const float* s, float* sums) {
  for (int r = 0; r < kBlock; ++r) {
    v16 sum{};
    for (int j = 0; j < kBlock; j += 16) sum += load(s + r * kBlock + j);
    sums[r] = hsum(sum);
  }
}

template <int NV>
void forward(ffi::ThreadPool& pool, const Dims& dims, const float* qkv, const int32_t* segments,
             int64_t window, float* out, float* lse) {
  constexpr int K = 16 * NV;
  const int64_t T = dims.length, blocks = T / kBlock, heads = dims.heads();
  const float scale = 1.0f / std::sqrt(static_cast<float>(K));
  parallel_for(pool, dims.batch * heads, [&](int64_t item) {
    const int64_t h = item % heads, b = item / heads, g = h / dims.repeats;
    Aligned qs(T * K), kt(K * T), vs(T * K);
    copy_rows(qs.data, query(qkv, dims, h), b, K, scale);
    copy_cols(kt.data, packed(qkv, dims, g, dims.repeats), b, K);
    copy_rows(vs.data, packed(qkv, dims, g, dims.repeats + 1), b, K, 1.0f);
    const Visibility visibility(segments, b, T, window);
    const auto out_rows = head(out, dims, h);
    alignas(64) float s[kBlock * kBlock], o[kBlock * K];
    float m[kBlock], l[kBlock], block_max[kBlock], sums[kBlock];
    for (int64_t qb = 0; qb < blocks; ++qb) {
      std::fill(m, m + kBlock, -INFINITY);
      std::fill(l, l + kBlock, 0.0f);
      std::fill(o, o + kBlock * K, 0.0f);
      for (int64_t kb = visibility.first_key_block(qb); kb <= qb; ++kb) {
        const Visibility::Pair pair = visibility.pair(qb, kb);
        if (!pair.seen) continue;
        const bool diagonal = kb == qb, partial = pair.partial();
        gemm<4>(s, qs.data + qb * kBlock * K, K, 1, kt.data + kb * K * kBlock, kBlock, K,
                kBlock, false);
        if (partial) visibility.mask(s, pair, qb, kb, -INFINITY);
        row_max(s, block_max, diagonal);
        for (int r = 0; r < kBlock; ++r) {
          const float new_max = std::max(m[r], block_max[r]);
          if (new_max != m[r]) {
            const float alpha = std::exp(m[r] - new_max);
            l[r] *= alpha;
            for (int d = 0; d < K; d += 16) store(o + r * K + d, load(o + r * K + d) * alpha);
            m[r] = new_max;
          }
        }
        exponentiate(s, m, diagonal, partial ? nullptr : sums);
        if (partial) {  // masked entries (and rows no key of this block is seen by) count 0
          visibility.mask(s, pair, qb, kb, 0.0f);
          row_sums(s, sums);
        }
        for (int r = 0; r < kBlock; ++r) l[r] += sums[r];
        gemm<NV>(o, s, kBlock, 1, vs.data + kb * kBlock * K, K, kBlock, kBlock, true);
      }
      for (int r = 0; r < kBlock; ++r) {
        const int64_t t = qb * kBlock + r;
        float* row = out_rows(b, t);
        for (int d = 0; d < K; ++d) row[d] = o[r * K + d] / l[r];
        lse[(b * heads + h) * T + t] = m[r] + std::log(l[r]);
      }
    }
  });
}

template <int NV>
void backward(ffi::ThreadPool& pool, const Dims& dims, const float* qkv, const int32_t* segments,
              int64_t window, const float* out, const float* lse, const float* dout, float* dqkv) {
  constexpr int K = 16 * NV;
  const int64_t T = dims.length, blocks = T / kBlock, heads = dims.heads();
  const float scale = 1.0f / std::sqrt(static_cast<float>(K));
  parallel_for(pool, dims.batch * dims.groups, [&](int64_t item) {
    const int64_t g = item % dims.groups, b = item / dims.groups;
    const auto keys = packed(qkv, dims, g, dims.repeats);
    Aligned ks(T * K), kt(K * T), vt(K * T), qs(T * K), dos(T * K), delta(T), dq_acc(T * K),
        dk_acc(T * K), dv_acc(T * K);
    copy_rows(ks.data, keys, b, K, 1.0f);
    copy_cols(kt.data, keys, b, K);
    copy_cols(vt.data, packed(qkv, dims, g, dims.repeats + 1), b, K);
    const Visibility visibility(segments, b, T, window);
    alignas(64) float p[kBlock * kBlock], dp[kBlock * kBlock];
    for (int64_t h = g * dims.repeats; h < (g + 1) * dims.repeats; ++h) {
      const float* lse_h = lse + (b * heads + h) * T;
      const auto out_rows = head(out, dims, h), dout_rows = head(dout, dims, h);
      copy_rows(qs.data, query(qkv, dims, h), b, K, scale);
      copy_rows(dos.data, dout_rows, b, K, 1.0f);
      for (int64_t t = 0; t < T; ++t) {
        v16 sum{};
        for (int d = 0; d < K; d += 16) sum += load(out_rows(b, t) + d) * load(dos.data + t * K + d);
        delta.data[t] = hsum(sum);
      }
      std::fill(dq_acc.data, dq_acc.data + T * K, 0.0f);
      for (int64_t kb = 0; kb < blocks; ++kb) {
        float* dk_block = dk_acc.data + kb * kBlock * K;
        float* dv_block = dv_acc.data + kb * kBlock * K;
        for (int64_t qb = kb; qb < visibility.query_blocks_end(kb); ++qb) {
          const Visibility::Pair pair = visibility.pair(qb, kb);
          if (!pair.seen) continue;
          const float* q_block = qs.data + qb * kBlock * K;
          const float* do_block = dos.data + qb * kBlock * K;
          gemm<4>(p, q_block, K, 1, kt.data + kb * K * kBlock, kBlock, K, kBlock, false);
          exponentiate(p, lse_h + qb * kBlock, qb == kb, nullptr);
          if (pair.partial()) visibility.mask(p, pair, qb, kb, 0.0f);
          // dV += P^T dO;  dP = dO V^T;  dS = P * (dP - delta);  dQ += dS K;  dK += dS^T Qs.
          gemm<NV>(dv_block, p, 1, kBlock, do_block, K, kBlock, kBlock, true);
          gemm<4>(dp, do_block, K, 1, vt.data + kb * K * kBlock, kBlock, K, kBlock, false);
          for (int r = 0; r < kBlock; ++r) {
            const float dr = delta.data[qb * kBlock + r];
            for (int j = 0; j < kBlock; j += 16) {
              const int i = r * kBlock + j;
              store(dp + i, load(p + i) * (load(dp + i) - dr));
            }
          }
          gemm<NV>(dq_acc.data + qb * kBlock * K, dp, kBlock, 1, ks.data + kb * kBlock * K,
                   K, kBlock, kBlock, true);
          gemm<NV>(dk_block, dp, 1, kBlock, q_block, K, kBlock, kBlock, true);
        }
      }
      const auto dq = query(dqkv, dims, h);
      for (int64_t t = 0; t < T; ++t)
        for (int d = 0; d < K; ++d) dq(b, t)[d] = dq_acc.data[t * K + d] * scale;
    }
    const auto dk = packed(dqkv, dims, g, dims.repeats);
    const auto dv = packed(dqkv, dims, g, dims.repeats + 1);
    for (int64_t t = 0; t < T; ++t) {
      std::copy(dk_acc.data + t * K, dk_acc.data + (t + 1) * K, dk(b, t));
      std::copy(dv_acc.data + t * K, dv_acc.data + (t + 1) * K, dv(b, t));
    }
  });
}

// qkv is (B, T, G, R + 2, K).
ffi::Error dims_of(ffi::Buffer<ffi::F32>& qkv, Dims& dims) {
  auto d = qkv.dimensions();
  if (d.size() != 5 || d[3] < 3)
    return ffi::Error::InvalidArgument("causal_attention: qkv must be (B, T, G, R + 2, K)");
  dims = Dims{d[0], d[1], d[2], d[3] - 2, d[4]};
  if (dims.length % kBlock != 0)
    return ffi::Error::InvalidArgument("causal_attention: length must be a multiple of 64");
  if (dims.width != 16 && dims.width != 32 && dims.width != 64 && dims.width != 128)
    return ffi::Error::InvalidArgument("causal_attention: head width must be 16, 32, 64 or 128");
  return ffi::Error::Success();
}

// Segment ids must be (B, T) for qkv's B and T.
ffi::Error check_segments(ffi::Buffer<ffi::S32>& segments, const Dims& dims) {
  auto d = segments.dimensions();
  if (d.size() != 2 || d[0] != dims.batch || d[1] != dims.length)
    return ffi::Error::InvalidArgument("causal_attention: segment ids must be (B, T)");
  return ffi::Error::Success();
}

// A window is a number of keys, 0 for none.
ffi::Error check_window(int64_t window) {
  if (window < 0)
    return ffi::Error::InvalidArgument("causal_attention: window must be >= 0 (0: none)");
  return ffi::Error::Success();
}

// Calls f with the kernel's vector count NV (16 * NV = K) as a compile-time constant.
template <typename F>
void by_width(int64_t width, F&& f) {
  switch (width) {
    case 16: f(std::integral_constant<int, 1>{}); break;
    case 32: f(std::integral_constant<int, 2>{}); break;
    case 64: f(std::integral_constant<int, 4>{}); break;
    default: f(std::integral_constant<int, 8>{}); break;
  }
}

ffi::Error forward_call(ffi::ThreadPool& pool, ffi::Buffer<ffi::F32>& qkv,
                        ffi::Buffer<ffi::S32>* segments, int64_t window,
                        ffi::ResultBuffer<ffi::F32>& out, ffi::ResultBuffer<ffi::F32>& lse) {
  Dims dims;
  if (ffi::Error error = dims_of(qkv, dims); error.failure()) return error;
  if (ffi::Error error = check_window(window); error.failure()) return error;
  if (segments)
    if (ffi::Error error = check_segments(*segments, dims); error.failure()) return error;
  by_width(dims.width, [&](auto nv) {
    forward<decltype(nv)::value>(pool, dims, qkv.typed_data(),
                                 segments ? segments->typed_data() : nullptr, window,
                                 out->typed_data(), lse->typed_data());
  });
  return ffi::Error::Success();
}

ffi::Error backward_call(ffi::ThreadPool& pool, ffi::Buffer<ffi::F32>& qkv,
                         ffi::Buffer<ffi::S32>* segments, int64_t window,
                         ffi::Buffer<ffi::F32>& out, ffi::Buffer<ffi::F32>& lse,
                         ffi::Buffer<ffi::F32>& dout, ffi::ResultBuffer<ffi::F32>& dqkv) {
  Dims dims;
  if (ffi::Error error = dims_of(qkv, dims); error.failure()) return error;
  if (ffi::Error error = check_window(window); error.failure()) return error;
  if (segments)
    if (ffi::Error error = check_segments(*segments, dims); error.failure()) return error;
  by_width(dims.width, [&](auto nv) {
    backward<decltype(nv)::value>(pool, dims, qkv.typed_data(),
                                  segments ? segments->typed_data() : nullptr, window,
                                  out.typed_data(), lse.typed_data(), dout.typed_data(),
                                  dqkv->typed_data());
  });
  return ffi::Error::Success();
}

ffi::Error forward_impl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv,
                        ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> lse,
                        int64_t window) {
  return forward_call(pool, qkv, nullptr, window, out, lse);
}

ffi::Error forward_segments_impl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv,
                                 ffi::Buffer<ffi::S32> segments, ffi::ResultBuffer<ffi::F32> out,
                                 ffi::ResultBuffer<ffi::F32> lse, int64_t window) {
  return forward_call(pool, qkv, &segments, window, out, lse);
}

ffi::Error backward_impl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv,
                         ffi::Buffer<ffi::F32> out, ffi::Buffer<ffi::F32> lse,
                         ffi::Buffer<ffi::F32> dout, ffi::ResultBuffer<ffi::F32> dqkv,
                         int64_t window) {
  return backward_call(pool, qkv, nullptr, window, out, lse, dout, dqkv);
}

ffi::Error backward_segments_impl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv,
                                  ffi::Buffer<ffi::S32> segments, ffi::Buffer<ffi::F32> out,
                                  ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dout,
                                  ffi::ResultBuffer<ffi::F32> dqkv, int64_t window) {
  return backward_call(pool, qkv, &segments, window, out, lse, dout, dqkv);
}

}  // namespace

// Every handler takes the window (int64, 0: none) as the attribute `window`.
XLA_FFI_DEFINE_HANDLER_SYMBOL(BigjaxCausalAttentionForward, forward_impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("window"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(BigjaxCausalAttentionSegmentsForward, forward_segments_impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("window"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(BigjaxCausalAttentionBackward, backward_impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("window"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(BigjaxCausalAttentionSegmentsBackward, backward_segments_impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("window"));
