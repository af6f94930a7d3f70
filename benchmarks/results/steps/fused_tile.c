/* Experiment, not part of the library: the BoRA forward y = x ΔW^T fused over token tiles.

   One OpenMP region for the whole call. Each thread takes tiles of `tile` tokens and, for its
   tile, projects (b GEMMs into a (tile, b, r) buffer), mixes (y-independent loop over b² r per
   token) and lifts (b GEMMs straight into the tile's rows of y), so the (b, r, N) intermediates
   of the unfused path never leave the thread's cache. GEMMs are the sgemm_ that torch's bundled
   BLAS exports, called single-threaded inside the region. Even splits only (n = b nj, m = b mi),
   float32, row-major: x (N, n), A (r, n), B (m, r), S (b, b, r) already scaled, y (N, m).
   Built and timed by fused_tile.py next to this file. */
#include <stdlib.h>

extern void sgemm_(const char *, const char *, const int *, const int *, const int *, const float *,
                   const float *, const int *, const float *, const int *, const float *, float *, const int *);

/* Row-major C (rows x cols, ldc) = op(...) through the column-major BLAS: C^T = B' A'. */
static void gemm_tn(int M, int N, int K, const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc) {
  const char ta = 'T', tb = 'N';
  const float one = 1.0f;
  sgemm_(&ta, &tb, &M, &N, &K, &one, a, &lda, b, &ldb, &beta, c, &ldc);
}

int bora_forward_tiled(const float *x, const float *A, const float *B, const float *S, float *y,
                       int N, int n, int m, int r, int b, int tile) {
  if (b <= 0 || n % b || m % b || tile <= 0) return 1;
  const int nj = n / b, mi = m / b, br = b * r, ntiles = (N + tile - 1) / tile;
  int failed = 0;
#pragma omp parallel
  {
    float *P = malloc(sizeof(float) * (size_t)tile * br), *Q = malloc(sizeof(float) * (size_t)tile * br);
    if (!P || !Q) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(static)
    for (int t = 0; t < ntiles; t++) {
      if (!P || !Q) continue;
      const int t0 = t * tile, T = N - t0 < tile ? N - t0 : tile;
      const float *xt = x + (size_t)t0 * n;
      /* project: P[s, j, :] = A_j x_j[s]^T, i.e. P^T (r x T, ld br) = A_j (r x nj) X_j^T */
      for (int j = 0; j < b; j++) gemm_tn(r, T, nj, A + (size_t)j * nj, n, xt + (size_t)j * nj, n, 0.0f, P + j * r, br);
      /* mix: Q[s, i, k] = sum_j S[i, j, k] P[s, j, k] */
      for (int s = 0; s < T; s++) {
        const float *p = P + (size_t)s * br;
        float *q = Q + (size_t)s * br;
        for (int i = 0; i < b; i++) {
          float *qi = q + i * r;
          for (int k = 0; k < r; k++) qi[k] = 0.0f;
          for (int j = 0; j < b; j++) {
            const float *pj = p + j * r, *sij = S + (size_t)(i * b + j) * r;
#pragma omp simd
            for (int k = 0; k < r; k++) qi[k] += sij[k] * pj[k];
          }
        }
      }
      /* lift: y[tile, block i] = Q[:, i, :] B_i^T, i.e. (mi x T, ld m) = B_i^T' Q_i^T */
      float *yt = y + (size_t)t0 * m;
      for (int i = 0; i < b; i++) gemm_tn(mi, T, r, B + (size_t)i * mi * r, r, Q + i * r, br, 0.0f, yt + (size_t)i * mi, m);
    }
    free(P);
    free(Q);
  }
  return failed ? 2 : 0;
}
