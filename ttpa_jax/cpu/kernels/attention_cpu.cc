// Fused masked softmax attention on the CPU, fp32, forward and backward (the flash-attention
// recurrences), called from XLA:CPU through its FFI (ttpa_jax/model/cpu_kernel.py builds and loads it).
//
// Shapes (row-major): q [B, T, K, G, H] (already times 1 / sqrt(H)), k and v [B, S, K, H], mask [B, T, S]
// bool, out [B, T, K, G, H], lse [B, K, G, T] (row log-sum-exp; 1e30 for a query that sees no key, whose
// output is 0), g = dL/dout, and the gradients dq (with respect to the scaled q), dk, dv.
//
// One work item is one (row b, key/value head, block of QB queries): its QB x G query rows (the G heads
// sharing the key head) against key blocks of KB columns, a key block skipped when the mask shows none
// of its keys to any of the item's queries. Scores, probabilities and their gradients stay in one
// [QB * G, KB] tile in cache; the five matmuls are one register-blocked kernel (`mm`). Items are shared
// out to the threads by an atomic counter; the backward pass sums each thread's dK and dV at the end.
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// The vector width and the matmul kernel's register block follow the instruction set the library is
// built for (-march=native): MR x NC vector accumulators plus NC vectors of B must fit the register
// file, or every multiply-add spills to memory (a 6 x 4 block of 16-float vectors, right for the 32
// registers of AVX-512, needs 48 of AVX2's 16 and ran 10x slower there).
#if defined(__AVX512F__)
constexpr int W = 16;  // floats per vector: one zmm register
constexpr int NC = 4;  // 6 x 4 accumulators + 4 of B = 28 of 32 registers; 64 columns per kernel call
#elif defined(__AVX__)
constexpr int W = 8;   // one ymm register (AVX, AVX2 + FMA)
constexpr int NC = 2;  // 6 x 2 accumulators + 2 of B = 14 of 16 registers; 16 columns per kernel call
#else
constexpr int W = 4;   // one 128-bit register (SSE, NEON)
constexpr int NC = 2;  // 6 x 2 accumulators + 2 of B = 14 of 16 (SSE) or 32 (NEON) registers
#endif
typedef float vf __attribute__((vector_size(4 * W), aligned(4)));    // W floats, unaligned access
typedef int32_t vi __attribute__((vector_size(4 * W), aligned(4)));  // W int32
constexpr int MR = 6;        // rows per kernel call
constexpr int QB = 32;       // queries per work item
constexpr int KB = 64;       // keys per tile
constexpr int VT = KB / W;   // vectors per tile row
constexpr float NEG = -1e30f;
static_assert(KB % (NC * W) == 0, "a tile's columns are a whole number of kernel column blocks");

inline vf splat(float x) { return vf{} + x; }

// e^x for x <= 0, to about 2e-7 relative; exactly 0 below -87.
inline vf vexp(vf x) {
  const vf lo = splat(-87.0f), magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  vi dead = x < lo;
  x = dead ? lo : x;
  vf big = x * 1.4426950408889634f + magic;
  vf n = big - magic;
  vi ni = (vi)big - (vi)magic;
  vf r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f;
  vf p = splat(1.0f / 5040);
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  vf two_n = (vf)((ni + 127) << 23);
  return (vf)((vi)(p * two_n) & ~dead);
}

// C[R rows][NC * W] (+)= A[R][inner] * B[inner][NC * W], B's rows ldb apart; A element (i, k) at
// A[i * lda + k], or at A[k * lda + i] when AT (A transposed).
template <int R, bool AT>
inline void mm_rows(const float* A, int lda, const float* B, int ldb, float* C, int ldc, int inner, bool add) {
  vf c[R][NC];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < NC; ++j) c[i][j] = add ? *(const vf*)(C + i * ldc + j * W) : vf{};
  for (int k = 0; k < inner; ++k) {
    const float* b = B + (size_t)k * ldb;
    vf bv[NC];
    for (int j = 0; j < NC; ++j) bv[j] = *(const vf*)(b + j * W);
    for (int i = 0; i < R; ++i) {
      float a = AT ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
      for (int j = 0; j < NC; ++j) c[i][j] += a * bv[j];
    }
  }
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < NC; ++j) *(vf*)(C + i * ldc + j * W) = c[i][j];
}

// C[rows][cols] (+)= A * B as above, cols a multiple of NC * W (KB and the head dims are).
template <bool AT>
void mm(const float* A, int lda, const float* B, int ldb, float* C, int ldc, int rows, int inner, int cols,
        bool add) {
  for (int j0 = 0; j0 < cols; j0 += NC * W) {
    int i = 0;
    for (; i + MR <= rows; i += MR) {
      const float* a = AT ? A + i : A + (size_t)i * lda;
      mm_rows<MR, AT>(a, lda, B + j0, ldb, C + (size_t)i * ldc + j0, ldc, inner, add);
    }
    const float* a = AT ? A + i : A + (size_t)i * lda;
    float* c = C + (size_t)i * ldc + j0;
    switch (rows - i) {
      case 5: mm_rows<5, AT>(a, lda, B + j0, ldb, c, ldc, inner, add); break;
      case 4: mm_rows<4, AT>(a, lda, B + j0, ldb, c, ldc, inner, add); break;
      case 3: mm_rows<3, AT>(a, lda, B + j0, ldb, c, ldc, inner, add); break;
      case 2: mm_rows<2, AT>(a, lda, B + j0, ldb, c, ldc, inner, add); break;
      case 1: mm_rows<1, AT>(a, lda, B + j0, ldb, c, ldc, inner, add); break;
      default: break;
    }
  }
}

struct Dims {
  int64_t B, T, S, K, G, H, Sp;  // Sp: S rounded up to KB
};

// Keys and values of every (b, key head), copied contiguous and zero-padded to Sp: vr [Sp, H] and the keys
// transposed per tile, kt [Sp / KB, H, KB] (a tile's H x KB block contiguous), what the forward pass
// reads; for the backward pass also kr [Sp, H] and vt [Sp / KB, H, KB].
struct Packed {
  std::vector<float> kt, kr, vr, vt;
  Packed(const Dims& d, const float* k, const float* v, bool backward) {
    size_t per = (size_t)d.Sp * d.H, n = (size_t)d.B * d.K;
    kt.assign(n * per, 0.f);
    vr.assign(n * per, 0.f);
    if (backward) {
      kr.assign(n * per, 0.f);
      vt.assign(n * per, 0.f);
    }
    for (int64_t b = 0; b < d.B; ++b)
      for (int64_t s = 0; s < d.S; ++s)
        for (int64_t h0 = 0; h0 < d.K; ++h0) {
          const float* ks = k + ((b * d.S + s) * d.K + h0) * d.H;
          const float* vs = v + ((b * d.S + s) * d.K + h0) * d.H;
          size_t base = (size_t)(b * d.K + h0) * per;
          std::memcpy(&vr[base + s * d.H], vs, d.H * sizeof(float));
          if (backward) std::memcpy(&kr[base + s * d.H], ks, d.H * sizeof(float));
          for (int64_t h = 0; h < d.H; ++h) {
            size_t at = base + (s / KB) * d.H * KB + h * KB + s % KB;
            kt[at] = ks[h];
            if (backward) vt[at] = vs[h];
          }
        }
  }
};

// Work item `i` of B x K x (T / QB rounded up): row b, key head kh, queries t0..t0+nt, nt * G query rows.
struct Item {
  int64_t b, kh, t0, nt, rows;
  Item(const Dims& d, int64_t i) {
    int64_t nqb = (d.T + QB - 1) / QB, qb = i % nqb;
    kh = (i / nqb) % d.K;
    b = i / (nqb * d.K);
    t0 = qb * QB;
    nt = std::min<int64_t>(QB, d.T - t0);
    rows = nt * d.G;
  }
};

// Runs fn(item, thread) for item in [0, n) on `threads` threads, the caller's one of them.
template <class F>
void parallel(int64_t n, int threads, F fn) {
  std::atomic<int64_t> next{0};
  auto work = [&](int t) {
    for (int64_t i; (i = next.fetch_add(1)) < n;) fn(i, t);
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& th : pool) th.join();
}

// Threads for `items` work items: the cores this process may run on (its affinity mask, as `taskset`
// sets it), or TTPA_JAX_KERNEL_THREADS.
int thread_count(int64_t items) {
  int n = (int)std::thread::hardware_concurrency();
#ifdef __linux__
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) n = CPU_COUNT(&set);
#endif
  if (const char* e = std::getenv("TTPA_JAX_KERNEL_THREADS")) n = std::atoi(e);
  return (int)std::max<int64_t>(1, std::min<int64_t>(std::max(n, 1), items));
}

// The item's query rows (t, g) -> row (t - t0) * G + g, copied from x [B, T, K, G, H] into xs [nt * G, H].
void gather_rows(const Dims& d, const float* x, int64_t b, int64_t kh, int64_t t0, int64_t nt, float* xs) {
  for (int64_t t = 0; t < nt; ++t)
    std::memcpy(xs + t * d.G * d.H, x + (((b * d.T + t0 + t) * d.K + kh) * d.G) * d.H, d.G * d.H * sizeof(float));
}

void scatter_rows(const Dims& d, const float* xs, int64_t b, int64_t kh, int64_t t0, int64_t nt, float* x) {
  for (int64_t t = 0; t < nt; ++t)
    std::memcpy(x + (((b * d.T + t0 + t) * d.K + kh) * d.G) * d.H, xs + t * d.G * d.H, d.G * d.H * sizeof(float));
}

// What queries t0..t0+nt of row b see of keys s0..s0+KB (cut to S): none, some, or all of them.
enum Seen { NONE, SOME, ALL };

Seen tile_seen(const Dims& d, const bool* mask, int64_t b, int64_t t0, int64_t nt, int64_t s0) {
  int64_t ns = std::min<int64_t>(KB, d.S - s0), count = 0;
  for (int64_t t = 0; t < nt; ++t) {
    const uint8_t* m = (const uint8_t*)(mask + (b * d.T + t0 + t) * d.S + s0);
    for (int64_t s = 0; s < ns; ++s) count += m[s];
  }
  return count == 0 ? NONE : (count == nt * KB ? ALL : SOME);
}

// Scores of the item's rows against key tile s0: st [nt * G, KB], set to NEG where the mask hides the key
// (unless the tile is seen whole).
void masked_scores(const Dims& d, const bool* mask, const float* qs, const float* kt, int64_t b, int64_t t0,
                   int64_t nt, int64_t s0, Seen seen, float* st) {
  typedef uint8_t vb __attribute__((vector_size(W), aligned(1)));
  mm<false>(qs, d.H, kt + s0 * d.H, KB, st, KB, nt * d.G, d.H, KB, false);
  if (seen == ALL) return;
  int64_t ns = std::min<int64_t>(KB, d.S - s0);
  uint8_t m[KB];
  for (int64_t t = 0; t < nt; ++t) {
    std::memset(m, 0, KB);
    std::memcpy(m, mask + (b * d.T + t0 + t) * d.S + s0, ns);
    for (int64_t g = 0; g < d.G; ++g) {
      vf* s = (vf*)(st + (t * d.G + g) * KB);
      for (int j = 0; j < VT; ++j) {
        vi shown = __builtin_convertvector(*(const vb*)(m + j * W), vi) != 0;
        s[j] = shown ? s[j] : splat(NEG);
      }
    }
  }
}

Dims dims_of(ffi::Buffer<ffi::F32>& q, ffi::Buffer<ffi::F32>& k) {
  auto qd = q.dimensions(), kd = k.dimensions();
  Dims d{qd[0], qd[1], kd[1], qd[2], qd[3], qd[4], 0};
  d.Sp = (d.S + KB - 1) / KB * KB;
  return d;
}

ffi::Error check(const Dims& d, ffi::Buffer<ffi::F32>& k, ffi::Buffer<ffi::PRED>& mask) {
  auto kd = k.dimensions(), md = mask.dimensions();
  if (d.H % KB != 0) return ffi::Error::InvalidArgument("attention kernel: head dim must be a multiple of 64");
  if (kd[0] != d.B || kd[2] != d.K || kd[3] != d.H || md[0] != d.B || md[1] != d.T || md[2] != d.S)
    return ffi::Error::InvalidArgument("attention kernel: q, k, mask shapes disagree");
  return ffi::Error::Success();
}

ffi::Error forward(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                   ffi::Buffer<ffi::PRED> mask, ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> lse) {
  Dims d = dims_of(q, k);
  if (auto e = check(d, k, mask); e.failure()) return e;
  Packed p(d, k.typed_data(), v.typed_data(), false);
  const bool* m = mask.typed_data();
  const float* qd = q.typed_data();
  float *od = out->typed_data(), *ld = lse->typed_data();
  int64_t items = d.B * d.K * ((d.T + QB - 1) / QB), R = QB * d.G;
  int threads = thread_count(items);
  std::vector<std::vector<float>> scratch(threads, std::vector<float>(R * (2 * d.H + KB + 2)));
  parallel(items, threads, [&](int64_t item, int th) {
    auto [b, kh, t0, nt, rows] = Item(d, item);
    float *qs = scratch[th].data(), *acc = qs + R * d.H, *st = acc + R * d.H, *mx = st + R * KB, *sum = mx + R;
    gather_rows(d, qd, b, kh, t0, nt, qs);
    std::fill(acc, acc + rows * d.H, 0.f);
    std::fill(mx, mx + rows, NEG);
    std::fill(sum, sum + rows, 0.f);
    size_t base = (size_t)(b * d.K + kh) * d.Sp * d.H;
    for (int64_t s0 = 0; s0 < d.S; s0 += KB) {
      Seen seen = tile_seen(d, m, b, t0, nt, s0);
      if (seen == NONE) continue;
      masked_scores(d, m, qs, p.kt.data() + base, b, t0, nt, s0, seen, st);
      for (int64_t r = 0; r < rows; ++r) {
        vf* s = (vf*)(st + r * KB);
        vf mv = s[0];
        for (int j = 1; j < VT; ++j) mv = mv > s[j] ? mv : s[j];
        float tile_max = mv[0];
        for (int i = 1; i < W; ++i) tile_max = std::max(tile_max, mv[i]);
        if (tile_max <= NEG / 2) {  // the row sees no key here: it adds nothing
          for (int j = 0; j < VT; ++j) s[j] = vf{};
          continue;
        }
        float m_new = std::max(mx[r], tile_max), corr = std::exp(mx[r] - m_new);
        vf tot{};
        for (int j = 0; j < VT; ++j) {
          s[j] = vexp(s[j] - m_new);
          tot += s[j];
        }
        float add = 0.f;
        for (int i = 0; i < W; ++i) add += tot[i];
        sum[r] = sum[r] * corr + add;
        mx[r] = m_new;
        if (corr != 1.f)
          for (int64_t h = 0; h < d.H; ++h) acc[r * d.H + h] *= corr;
      }
      mm<false>(st, KB, p.vr.data() + base + s0 * d.H, d.H, acc, d.H, rows, KB, d.H, true);
    }
    for (int64_t r = 0; r < rows; ++r) {
      bool seen = mx[r] > NEG / 2;
      float inv = seen ? 1.f / sum[r] : 0.f;
      for (int64_t h = 0; h < d.H; ++h) acc[r * d.H + h] *= inv;
      int64_t t = t0 + r / d.G, g = r % d.G;
      ld[((b * d.K + kh) * d.G + g) * d.T + t] = seen ? mx[r] + std::log(sum[r]) : -NEG;
    }
    scatter_rows(d, acc, b, kh, t0, nt, od);
  });
  return ffi::Error::Success();
}

ffi::Error backward(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                    ffi::Buffer<ffi::PRED> mask, ffi::Buffer<ffi::F32> out, ffi::Buffer<ffi::F32> lse,
                    ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                    ffi::ResultBuffer<ffi::F32> dv) {
  Dims d = dims_of(q, k);
  if (auto e = check(d, k, mask); e.failure()) return e;
  Packed p(d, k.typed_data(), v.typed_data(), true);
  const bool* m = mask.typed_data();
  const float *qd = q.typed_data(), *od = out.typed_data(), *ld = lse.typed_data(), *gd = g.typed_data();
  int64_t items = d.B * d.K * ((d.T + QB - 1) / QB), R = QB * d.G;
  size_t kv = (size_t)d.B * d.K * d.Sp * d.H;
  int threads = thread_count(items);
  std::vector<std::vector<float>> scratch(threads, std::vector<float>(R * (4 * d.H + 2 * KB + 2)));
  std::vector<std::vector<float>> dks(threads, std::vector<float>(kv, 0.f)), dvs(threads, std::vector<float>(kv, 0.f));
  parallel(items, threads, [&](int64_t item, int th) {
    auto [b, kh, t0, nt, rows] = Item(d, item);
    float *qs = scratch[th].data(), *gs = qs + R * d.H, *os = gs + R * d.H, *dqs = os + R * d.H;
    float *pt = dqs + R * d.H, *dpt = pt + R * KB, *lr = dpt + R * KB, *delta = lr + R;
    gather_rows(d, qd, b, kh, t0, nt, qs);
    gather_rows(d, gd, b, kh, t0, nt, gs);
    gather_rows(d, od, b, kh, t0, nt, os);
    std::fill(dqs, dqs + rows * d.H, 0.f);
    for (int64_t r = 0; r < rows; ++r) {
      int64_t t = t0 + r / d.G, gi = r % d.G;
      lr[r] = ld[((b * d.K + kh) * d.G + gi) * d.T + t];
      float dot = 0.f;
      for (int64_t h = 0; h < d.H; ++h) dot += gs[r * d.H + h] * os[r * d.H + h];
      delta[r] = dot;
    }
    size_t base = (size_t)(b * d.K + kh) * d.Sp * d.H;
    float *dk_t = dks[th].data() + base, *dv_t = dvs[th].data() + base;
    for (int64_t s0 = 0; s0 < d.S; s0 += KB) {
      Seen seen = tile_seen(d, m, b, t0, nt, s0);
      if (seen == NONE) continue;
      masked_scores(d, m, qs, p.kt.data() + base, b, t0, nt, s0, seen, pt);
      for (int64_t r = 0; r < rows; ++r) {
        vf* s = (vf*)(pt + r * KB);
        for (int j = 0; j < VT; ++j) s[j] = vexp(s[j] - lr[r]);  // masked or unseen rows: exactly 0
      }
      mm<true>(pt, KB, gs, d.H, dv_t + s0 * d.H, d.H, KB, rows, d.H, true);        // dV += P^T dO
      mm<false>(gs, d.H, p.vt.data() + base + s0 * d.H, KB, dpt, KB, rows, d.H, KB, false);  // dP = dO V^T
      for (int64_t r = 0; r < rows; ++r) {
        vf *s = (vf*)(pt + r * KB), *dp = (vf*)(dpt + r * KB);
        for (int j = 0; j < VT; ++j) dp[j] = s[j] * (dp[j] - delta[r]);  // dS
      }
      mm<false>(dpt, KB, p.kr.data() + base + s0 * d.H, d.H, dqs, d.H, rows, KB, d.H, true);  // dQ += dS K
      mm<true>(dpt, KB, qs, d.H, dk_t + s0 * d.H, d.H, KB, rows, d.H, true);                // dK += dS^T Q
    }
    scatter_rows(d, dqs, b, kh, t0, nt, dq->typed_data());
  });
  float *dkd = dk->typed_data(), *dvd = dv->typed_data();
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t kh = 0; kh < d.K; ++kh)
      for (int64_t s = 0; s < d.S; ++s) {
        size_t src = ((size_t)(b * d.K + kh) * d.Sp + s) * d.H, dst = ((b * d.S + s) * d.K + kh) * d.H;
        for (int64_t h = 0; h < d.H; ++h) {
          float a = 0.f, c = 0.f;
          for (int th = 0; th < threads; ++th) {
            a += dks[th][src + h];
            c += dvs[th][src + h];
          }
          dkd[dst + h] = a;
          dvd[dst + h] = c;
        }
      }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(TtpaAttentionForward, forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(TtpaAttentionBackward, backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
