// datanas/cuda/reduce.cuh - the block sum that the reducing kernels share.
//
// Every deterministic reduction here has two stages: each block adds its share into a partial
// (a grid-stride loop per thread, then this tree across the block), and a finishing kernel adds
// the partials in block order. A fixed tree rather than atomics keeps the bits the same from run
// to run and from card to card, which the CPU-parity tests rely on.
#pragma once

namespace datanas::cuda {

/// The sum of v over the block's Threads threads (Threads a power of two, the block's size):
/// pairs at distance Threads / 2 first, then Threads / 4, ..., so the order of additions is
/// fixed. Every thread of the block must call it. Returns the sum on thread 0 and 0 on the
/// others: only thread 0 reads sums[0], and only thread 0 writes it on entry, so calls may
/// follow one another (one per term) without a barrier in between.
template <int Threads, class T>
__device__ __forceinline__ T block_tree_sum(T v, T* sums) {
  static_assert(Threads > 0 && (Threads & (Threads - 1)) == 0,
                "block_tree_sum: Threads must be a power of two");
  sums[threadIdx.x] = v;
  __syncthreads();
  for (int half = Threads / 2; half > 0; half /= 2) {
    if (int(threadIdx.x) < half) sums[threadIdx.x] += sums[threadIdx.x + half];
    __syncthreads();
  }
  return threadIdx.x == 0 ? sums[0] : T(0);
}

}  // namespace datanas::cuda
