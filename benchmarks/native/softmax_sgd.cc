// Softmax regression's SGD steps as one XLA FFI call, hand-written for
// AVX-512: the ceiling of a native kernel, for benchmarks/native_softmax.py.
// Not part of the library.
//
// Each step trains on the images `order[(first + s) * batch ...]` of the
// training split, batch by batch as core.train_steps takes an epoch's copy:
// the kernel reads the rows where they lie, so no epoch is copied. x = u8 * (1 / 255),
// logits = x W + b, g = (softmax(logits) - onehot) / batch, W += -lr * x^T g,
// b += -lr * sum(g). The kernel is held transposed (classes by pixels) during
// the call, so that both products run along the pixels, 16 at a time.
//
// With two threads the second one is a task on XLA's intra-op thread pool:
// each step's forward is split over the batch, the kernel gradient and the
// update over the pixels, with a spinning barrier after each.

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kPixels = 784;
constexpr int kClasses = 10;
constexpr int kLanes = 16;
constexpr int kBlocks = kPixels / kLanes;  // 49 blocks of 16 pixels
// Pixel blocks of the kernel gradient taken by thread 0; thread 1 the rest.
constexpr int kFirstThreadBlocks = 25;

// 16 pixels as floats in [0, 1], scaled as the library scales them.
inline __m512 Pixels(const uint8_t* p) {
  const __m512 inverse_255 = _mm512_set1_ps(1.0f / 255.0f);
  __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes)),
                       inverse_255);
}

// exp(x) for x <= 0 (Cephes' expf polynomial, within 2 ulp).
inline __m512 Exp(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  __m512 n = _mm512_roundscale_ps(
      _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  x = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), x);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(y, n);
}

// Sense-reversing barrier; spins, then yields, since the two cores are shared
// with XLA's, Python's and the epoch copy's threads.
struct alignas(64) Barrier {
  std::atomic<int> arrived{0};
  std::atomic<int> generation{0};

  void Wait(int parties) {
    if (parties == 1) return;
    int seen = generation.load(std::memory_order_acquire);
    if (arrived.fetch_add(1, std::memory_order_acq_rel) == parties - 1) {
      arrived.store(0, std::memory_order_relaxed);
      generation.store(seen + 1, std::memory_order_release);
      return;
    }
    for (int spins = 0; generation.load(std::memory_order_acquire) == seen; ++spins) {
      if (spins < 2000) {
        _mm_pause();
      } else {
        std::this_thread::yield();
      }
    }
  }
};

struct alignas(64) Partial {
  float loss = 0;
  float correct = 0;
};

struct Run {
  int batch, steps;
  float learning_rate;
  const uint8_t* images;  // the training split's [N][784]
  const int32_t* labels;
  const int32_t* order;  // the epoch's order of the split's rows
  int64_t first_row;
  std::vector<float> weights;  // [10][784], the kernel transposed
  alignas(64) float bias[kLanes] = {};
  std::vector<float> grads;  // [batch][16]: (softmax - onehot) / batch
  float* loss;
  float* accuracy;
  Partial partial[2];
  Barrier barrier;
};

// Loss, correctness and (softmax - onehot) / batch of one row's logits.
void SoftmaxRow(Run& run, const float* logits_16, int label, float* grad_16,
                Partial& partial) {
  const __mmask16 classes = (1 << kClasses) - 1;
  __m512 logits = _mm512_maskz_loadu_ps(classes, logits_16);
  float top = _mm512_mask_reduce_max_ps(classes, logits);
  int argmax = 0;
  for (int c = 1; c < kClasses; ++c) {
    if (logits_16[c] > logits_16[argmax]) argmax = c;
  }
  __m512 e = _mm512_maskz_mov_ps(
      classes, Exp(_mm512_sub_ps(logits, _mm512_set1_ps(top))));
  float total = _mm512_reduce_add_ps(e);
  partial.loss += std::log(total) - (logits_16[label] - top);
  partial.correct += argmax == label;
  __m512 p = _mm512_div_ps(e, _mm512_set1_ps(total));
  p = _mm512_mask_sub_ps(p, 1 << label, p, _mm512_set1_ps(1.0f));
  _mm512_storeu_ps(grad_16, _mm512_mul_ps(p, _mm512_set1_ps(1.0f / run.batch)));
}

// Logits and gradient rows [begin, end) of the batch `ids`, two rows at a time.
void Forward(Run& run, const int32_t* ids, int begin, int end, Partial& partial) {
  const float* w = run.weights.data();
  for (int r = begin; r < end; r += 2) {
    const bool pair = r + 1 < end;
    __m512 acc0[kClasses], acc1[kClasses];
    for (int c = 0; c < kClasses; ++c) acc0[c] = acc1[c] = _mm512_setzero_ps();
    const uint8_t* row0 = run.images + static_cast<int64_t>(ids[r]) * kPixels;
    const uint8_t* row1 =
        pair ? run.images + static_cast<int64_t>(ids[r + 1]) * kPixels : row0;
    for (int block = 0; block < kBlocks; ++block) {
      __m512 x0 = Pixels(row0 + block * kLanes);
      __m512 x1 = Pixels(row1 + block * kLanes);
#pragma GCC unroll 10
      for (int c = 0; c < kClasses; ++c) {
        __m512 wc = _mm512_loadu_ps(w + c * kPixels + block * kLanes);
        acc0[c] = _mm512_fmadd_ps(x0, wc, acc0[c]);
        acc1[c] = _mm512_fmadd_ps(x1, wc, acc1[c]);
      }
    }
    alignas(64) float logits[2][kLanes] = {};
    for (int c = 0; c < kClasses; ++c) {
      logits[0][c] = _mm512_reduce_add_ps(acc0[c]) + run.bias[c];
      logits[1][c] = _mm512_reduce_add_ps(acc1[c]) + run.bias[c];
    }
    SoftmaxRow(run, logits[0], run.labels[ids[r]], &run.grads[r * kLanes], partial);
    if (pair) {
      SoftmaxRow(run, logits[1], run.labels[ids[r + 1]], &run.grads[(r + 1) * kLanes],
                 partial);
    }
  }
}

// The kernel gradient of pixel blocks [begin, end) and their update.
void Backward(Run& run, const int32_t* ids, int begin, int end) {
  const __m512 scale = _mm512_set1_ps(-run.learning_rate);
  const float* g = run.grads.data();
  for (int block = begin; block < end; block += 2) {
    const bool pair = block + 1 < end;
    __m512 acc0[kClasses], acc1[kClasses];
    for (int c = 0; c < kClasses; ++c) acc0[c] = acc1[c] = _mm512_setzero_ps();
    for (int b = 0; b < run.batch; ++b) {
      const uint8_t* pixels =
          run.images + static_cast<int64_t>(ids[b]) * kPixels + block * kLanes;
      __m512 x0 = Pixels(pixels);
      __m512 x1 = pair ? Pixels(pixels + kLanes) : _mm512_setzero_ps();
#pragma GCC unroll 10
      for (int c = 0; c < kClasses; ++c) {
        __m512 gc = _mm512_set1_ps(g[b * kLanes + c]);
        acc0[c] = _mm512_fmadd_ps(x0, gc, acc0[c]);
        acc1[c] = _mm512_fmadd_ps(x1, gc, acc1[c]);
      }
    }
    for (int c = 0; c < kClasses; ++c) {
      float* w = run.weights.data() + c * kPixels + block * kLanes;
      _mm512_storeu_ps(w, _mm512_add_ps(_mm512_loadu_ps(w), _mm512_mul_ps(acc0[c], scale)));
      if (pair) {
        _mm512_storeu_ps(w + kLanes, _mm512_add_ps(_mm512_loadu_ps(w + kLanes),
                                                   _mm512_mul_ps(acc1[c], scale)));
      }
    }
  }
}

// Asks for the rows of a batch ahead of their use: they lie anywhere in the
// 47 MB split, where the hardware cannot guess them.
void Prefetch(const Run& run, const int32_t* ids, int begin, int end) {
  for (int r = begin; r < end; ++r) {
    const char* row = reinterpret_cast<const char*>(run.images) +
                      static_cast<int64_t>(ids[r]) * kPixels;
    for (int offset = 0; offset < kPixels; offset += 64) {
      _mm_prefetch(row + offset, _MM_HINT_T0);
    }
    _mm_prefetch(row + kPixels - 1, _MM_HINT_T0);
  }
}

// Thread `t` of `threads` through every step.
void Train(Run& run, int t, int threads) {
  const int half = threads == 1 ? run.batch : run.batch / 2;
  const int rows_begin = t == 0 ? 0 : half, rows_end = t == 0 ? half : run.batch;
  const int blocks_begin = t == 0 ? 0 : kFirstThreadBlocks;
  const int blocks_end = threads == 1 || t == 1 ? kBlocks : kFirstThreadBlocks;
  for (int s = 0; s < run.steps; ++s) {
    const int32_t* ids = run.order + run.first_row + static_cast<int64_t>(s) * run.batch;
    run.partial[t] = Partial();
    Forward(run, ids, rows_begin, rows_end, run.partial[t]);
    run.barrier.Wait(threads);
    if (t == 0) {
      __m512 sum = _mm512_setzero_ps();
      for (int b = 0; b < run.batch; ++b) {
        sum = _mm512_add_ps(sum, _mm512_loadu_ps(&run.grads[b * kLanes]));
      }
      __m512 bias = _mm512_load_ps(run.bias);
      _mm512_store_ps(run.bias, _mm512_add_ps(
          bias, _mm512_mul_ps(sum, _mm512_set1_ps(-run.learning_rate))));
      float loss = run.partial[0].loss, correct = run.partial[0].correct;
      if (threads == 2) {
        loss += run.partial[1].loss;
        correct += run.partial[1].correct;
      }
      run.loss[s] = loss / run.batch;
      run.accuracy[s] = correct / run.batch;
    }
    if (s + 1 < run.steps) Prefetch(run, ids + run.batch, rows_begin, rows_end);
    Backward(run, ids, blocks_begin, blocks_end);
    run.barrier.Wait(threads);
  }
}

// Who runs thread 1: the pool's task, or nobody (then thread 0 trains alone).
struct Control {
  std::atomic<int> state{0};  // 0 undecided, 1 the task joined, 2 alone
  std::atomic<bool> task_done{false};
  Run* run = nullptr;
};

ffi::Error SoftmaxSgdImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> kernel,
                          ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::U8> images,
                          ffi::Buffer<ffi::S32> labels, ffi::Buffer<ffi::S32> order,
                          ffi::Buffer<ffi::S32> first_batch,
                          ffi::ResultBuffer<ffi::F32> kernel_out,
                          ffi::ResultBuffer<ffi::F32> bias_out,
                          ffi::ResultBuffer<ffi::F32> loss,
                          ffi::ResultBuffer<ffi::F32> accuracy, int32_t num_steps,
                          int32_t batch_size, float learning_rate, int32_t threads) {
  if (kernel.element_count() != kPixels * kClasses || bias.element_count() != kClasses) {
    return ffi::Error::InvalidArgument("the kernel must be 784x10 and the bias 10");
  }
  const int64_t rows = labels.element_count();
  if (static_cast<int64_t>(images.element_count()) != rows * kPixels) {
    return ffi::Error::InvalidArgument("images must be [N, 784] beside N labels");
  }
  const int64_t first_row = static_cast<int64_t>(first_batch.typed_data()[0]) * batch_size;
  if (batch_size < 1 || num_steps < 1 || first_row < 0 ||
      first_row + static_cast<int64_t>(num_steps) * batch_size > rows) {
    return ffi::Error::InvalidArgument("the steps' batches must lie inside the epoch");
  }
  if (static_cast<int64_t>(order.element_count()) != rows) {
    return ffi::Error::InvalidArgument("the order must have a row id for each label");
  }
  const int32_t* ids = order.typed_data();
  for (int64_t i = first_row; i < first_row + static_cast<int64_t>(num_steps) * batch_size; ++i) {
    if (ids[i] < 0 || ids[i] >= rows) {
      return ffi::Error::InvalidArgument("the order's row ids must lie in the split");
    }
  }
  if (threads != 1 && threads != 2) {
    return ffi::Error::InvalidArgument("threads must be 1 or 2");
  }

  Run run;
  run.batch = batch_size;
  run.steps = num_steps;
  run.learning_rate = learning_rate;
  run.images = images.typed_data();
  run.labels = labels.typed_data();
  run.order = ids;
  run.first_row = first_row;
  run.weights.resize(kClasses * kPixels);
  run.grads.assign(static_cast<size_t>(batch_size) * kLanes, 0.0f);
  run.loss = loss->typed_data();
  run.accuracy = accuracy->typed_data();
  const float* k = kernel.typed_data();
  for (int p = 0; p < kPixels; ++p) {
    for (int c = 0; c < kClasses; ++c) run.weights[c * kPixels + p] = k[p * kClasses + c];
  }
  std::copy_n(bias.typed_data(), kClasses, run.bias);

  int parties = 1;
  if (threads == 2 && batch_size >= 2 && pool.num_threads() > 0) {
    auto control = std::make_shared<Control>();
    control->run = &run;
    const std::thread::id caller = std::this_thread::get_id();
    pool.Schedule([control, caller] {
      int undecided = 0;
      // A pool without a free thread runs the task in the caller's: it must
      // not wait for itself.
      if (std::this_thread::get_id() == caller ||
          !control->state.compare_exchange_strong(undecided, 1)) {
        return;
      }
      Train(*control->run, 1, 2);
      control->task_done.store(true, std::memory_order_release);
    });
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(2);
    while (control->state.load(std::memory_order_acquire) == 0 &&
           std::chrono::steady_clock::now() < deadline) {
      _mm_pause();
    }
    int undecided = 0;
    if (!control->state.compare_exchange_strong(undecided, 2)) {
      parties = 2;
      Train(run, 0, 2);
      while (!control->task_done.load(std::memory_order_acquire)) _mm_pause();
    }
  }
  if (parties == 1) Train(run, 0, 1);

  float* k_out = kernel_out->typed_data();
  for (int p = 0; p < kPixels; ++p) {
    for (int c = 0; c < kClasses; ++c) k_out[p * kClasses + c] = run.weights[c * kPixels + p];
  }
  std::copy_n(run.bias, kClasses, bias_out->typed_data());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SoftmaxSgd, SoftmaxSgdImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("num_steps")
                                  .Attr<int32_t>("batch_size")
                                  .Attr<float>("learning_rate")
                                  .Attr<int32_t>("threads"));
