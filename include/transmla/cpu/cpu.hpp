// transmla/cpu/cpu.hpp — the CPU attention backend (umbrella header).
//
// Public API (namespace transmla::cpu; storage types float, transmla::half, transmla::bfloat16 for
// queries, caches and outputs; accumulation in f32):
//
//   GQA (queries RoPE-rotated; the T query tokens of a sequence are the last T tokens of its cache)
//     gqa_decode(q [T][n_q][d], GqaSeqView kv, scale, out [T][n_q][d], lse [T][n_q] = {}, Options = {})
//     gqa_decode(q [tokens][n_q][d], q_indptr (batch+1), span<GqaSeqView>, scale, out, lse, opt)
//     gqa_prefill(q [T][n_q][d], k, v [S][n_kv][d], scale, out, lse, q_offset = S − T, opt)   causal
//     gqa_prefill(q, GqaSeqView kv, scale, out, lse, opt)                  prompt already in the cache
//     gqa_attention(GqaAttention{...}, opt)                                 the general batched form
//   MLA, absorbed order (latent multi-query attention; value = first r columns of each cache row)
//     mla_decode(q_abs [T][H][r + d_r], MlaSeqView cache, scale, out_latent [T][H][r], lse, opt)
//     mla_decode(q_abs, q_indptr, span<MlaSeqView>, scale, out_latent, lse, opt)
//     mla_attention(MlaAttention{...}, opt)
//   MLA helpers and prefill (cpu/mla.hpp)
//     absorb_query(q_nope, q_pe, kv_b, d_v, q_abs)     q_abs = [W_UK^iᵀ q_nope_i | q_pe_i]
//     apply_uv(latent, kv_b, d_nope, out)              out_i = W_UV^i · latent_i
//     apply_uv_o(latent, kv_b, d_nope, w_o, y)         y = W_O · concat_i(W_UV^i · latent_i)
//     mla_prefill(q_nope, q_pe, cache, kv_b, scale, out [T][H][d_v], lse, MlaOrder, opt)
//                 naive (decompressed) or absorbed order, chosen per call by a cost model
//     (the three helpers convert kv_b per call; an engine prepares it once per layer instead:)
//   MLA prepared decode weights (cpu/mla_weights.hpp)
//     MlaWeights w(kv_b, H, d_nope, d_v [, w_o, MlaFusion]);   f32 W_UK, W_UV (W_O or fused W_O·W_UV)
//     w.absorb(q_nope, q_pe, q_abs); w.up_project(latent, out); w.up_project(latent, y, workspace)
//       no weight conversion, no heap allocation for T = 1; const methods thread-safe
//   Threading (docs/conventions.md): the library never starts threads.
//     auto call = prepare(GqaAttention{...} or MlaAttention{...}, opt);  Plan plan = make_plan(call, opt);
//     plan.run(call, i) for i in [0, plan.size()) from any threads (each once per use), or
//     run_all(plan, call) (OpenMP parallel loop when enabled); split
//     key ranges merge by log-sum-exp inside the item that completes a group.
//     The convenience calls above do exactly this in an OpenMP parallel loop when OpenMP is on.
//   Instruction set (cpu/dispatch.hpp): Options::isa = best | sse2 | avx2 | avx512 | avx512bf16
//     (run-time dispatch, when the target links the library made by transmla_cpu_kernels() from
//     cpu/transmla_cpu.cmake) or `native` (kernels compiled inline for the TU's own flags).
//
// Building (CMake):
//     include(<transmla prefix>/include/transmla/cpu/transmla_cpu.cmake)
//     transmla_cpu_kernels(my_kernels)        # static lib: cpu/isa/{sse2,avx2,avx512,avx512bf16}.cpp
//     target_link_libraries(app PRIVATE transmla::transmla my_kernels)   # defines TRANSMLA_CPU_DISPATCH=1
//   Without that library the same headers compile the kernels inline for the TU's own flags.
//
// Kernel structure (cpu/core.hpp): one attention kernel over "rows" (query heads × query tokens
// sharing a KV source) and key tiles with an online base-2 softmax:
//   - GQA decode (≤ 4 rows per KV head): a streaming variant reads K/V straight from the cache
//     (f16/bf16 widened in registers), a block of KV heads per work item so each token's rows are
//     one contiguous read;
//   - more rows (MLA: all heads × tokens; prefill: tokens × group): K (and V) tiles converted once
//     to f32 scratch, a register-blocked Q·Kᵀ micro-kernel (rows × keys, one transposing
//     horizontal sum per W dot products; a transposed-K variant for GQA prefill; vdpbf16ps for a
//     bf16 cache on AVX-512-BF16), and a P·V micro-kernel with rows × vectors of accumulators.
//     For MLA the value tile is the first r columns of the same latent tile (no second copy).
//
// Errors: bad shapes, strides, page tables or lengths throw transmla::error naming the call and
// the argument.
#pragma once

#include "transmla/cpu/attention.hpp"
#include "transmla/cpu/dispatch.hpp"
#include "transmla/cpu/mla.hpp"
#include "transmla/cpu/mla_weights.hpp"
#include "transmla/cpu/plan.hpp"
