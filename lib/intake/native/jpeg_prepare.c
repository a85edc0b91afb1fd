/*
 * JPEG -> model input tensor in one native call, for the intake's common case (a JPEG without EXIF rotation).
 *
 * Why this exists: at 336-384 px model inputs, sharp spends ~3.2 ms decoding a typical crawled JPEG at full size and
 * ~1.5 ms more resizing it, twice the intake's per-pair budget. libjpeg-turbo can decode straight to M/8 of the size
 * (scaled IDCT), which sharp asks for only from a 3x reduction up, and no maintained Node binding exposes. This module
 * decodes at the smallest M/8 that still covers the output footprint, resamples with Pillow's exact resampling
 * arithmetic (the reference preprocessing is PIL: expand2square, then a bicubic resize), and writes the normalised
 * float32 CHW tensor into the caller's array, all on the libuv pool.
 *
 * prepare(bytes, out, params) -> Promise<{ width, height, scaleNum }>
 *   bytes   Buffer with the JPEG
 *   out     Float32Array of 3 * size * size, written in full on success (untouched on failure)
 *   params  Float64Array:
 *           [0] size S          [1] mode (0 squash, 1 pad to square, 2 shortest edge + centre crop)
 *           [2] filter (0 bicubic, 1 bilinear)
 *           [3..5] pad colour r, g, b (mode 1)
 *           [6..8] scale per channel, [9..11] offset per channel: out = px * scale + offset (as float32 values)
 *           [12] resized width, [13] resized height (mode 2: the shortest-edge resize before the crop)
 *           [14] minimum ratio of decoded size to output footprint (1 = smallest scale that does not upsample;
 *                a value >= 8 or 0 disables DCT scaling, which makes the output PIL's to the bit)
 *           [15] expected width, [16] expected height: the size the caller read from the markers and checked; the
 *                frame header libjpeg reads must state the same (0: not checked)
 *           [17] pixel limit: width x height over it is refused before any pixel is decoded, and libjpeg's own
 *                memory is bounded by it (0: DEFAULT_MAX_PIXELS)
 *           [18] most scans read (progressive JPEGs; 0: DEFAULT_MAX_SCANS)
 *           Params 15-18 are optional: a Float64Array(15) gets the defaults and no size check.
 *   width/height: the JPEG's size; scaleNum: the M of the M/8 decode scale used.
 *
 * Pillow's resampling, as reproduced here: separable, horizontal pass then vertical, each output pixel's taps from
 * the filter stretched by max(scale, 1), weights normalised in double then rounded to 22-bit fixed point, 8-bit
 * rounding (floor((sum + 2^21) / 2^22), clamped) after each pass. Padding is virtual: taps that fall on the pad take
 * the pad colour, so the padded square is never materialised. At scale 8/8 the result equals PIL's
 * resize(expand2square(img)) bit for bit (test/intake/jpeg-native.test.ts, on PIL outputs committed by
 * tools/export/pil_fixtures.py); at M/8 < 8/8 the taps are laid
 * on the decoded grid (libjpeg's scaled pixel i covers source pixels [8i/M, 8(i+1)/M)).
 *
 * Errors reject with an Error whose `code` is JPEG_TRUNCATED (premature end of data: libjpeg would fill the rest
 * with grey), JPEG_UNSUPPORTED (CMYK/YCCK: left to the general decoder) or JPEG_ERROR (libjpeg's message). Warnings
 * other than truncation (extraneous bytes, ...) are tolerated, as libvips' fail-on=truncated does.
 *
 * Hostile input (each bounded here, whatever the caller checked before; the caller refuses the image rather than
 * hand it to another decoder):
 *   JPEG_SIZE_MISMATCH    libjpeg's frame header states another size than params [15]/[16] (markers the caller's
 *                         reader skipped, e.g. a bogus FF 00 "segment" hiding a 65500x65500 frame header)
 *   JPEG_TOO_LARGE        width x height over the pixel limit, components x pixels over 3x it, or libjpeg's memory
 *                         over the bound derived from it (max_memory_to_use: whole-image coefficient buffers)
 *   JPEG_TOO_MANY_SCANS   more scans than params [18] (decode cost grows with pixels x scans: thousands of scans
 *                         are minutes of CPU on a libuv pool thread), as djpeg -maxscans
 *   JPEG_BAD_PROGRESSION  libjpeg's bogus-progression warning (a scan that repeats or skips refinement bits)
 *
 * Built by scripts/build-native.sh against the system libjpeg-turbo.
 */
#include <node_api.h>
#include <math.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jpeglib.h>
#include <jerror.h>

#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

#define PRECISION_BITS (32 - 8 - 2)
#define N_PARAMS 19
#define N_PARAMS_MIN 15
#define DEFAULT_MAX_PIXELS 50000000.0
#define DEFAULT_MAX_SCANS 100
/* libjpeg's allocations beyond whole-image coefficient buffers (tables, row buffers): a few MB at most. */
#define MEMORY_SLACK (64L * 1024 * 1024)
/* Scanlines asked of libjpeg per call (it returns at most its output row group: 1-2 rows, more when scaled). */
#define SCAN_ROWS 16

enum { MODE_SQUASH = 0, MODE_PAD = 1, MODE_CROP = 2 };

typedef struct {
  struct jpeg_error_mgr pub;
  jmp_buf jump;
  const char *code;
  char message[JMSG_LENGTH_MAX];
} error_mgr;

/* Called by libjpeg before each unit of input (an iMCU row of a scan) and each output call: the scan limit. */
typedef struct {
  struct jpeg_progress_mgr pub;
  error_mgr *err;
  int max_scans;
} progress_mgr;

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref input_ref, out_ref;
  const unsigned char *input;
  size_t input_len;
  float *out;
  double p[N_PARAMS];
  unsigned int width, height, scale_num;
  const char *code;
  char message[JMSG_LENGTH_MAX + 64];
} job_t;

/* One axis of the resampling: for each output index, its taps on the decoded content (start, count, weights) and
 * the summed weight of the taps that fall on the pad. */
typedef struct {
  int out_n;
  int ksize;
  int *start, *count;
  int32_t *k, *pad_k;
} axis_t;

static double bicubic(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

static double triangle(double x) {
  if (x < 0.0) x = -x;
  if (x < 1.0) return 1.0 - x;
  return 0.0;
}

static int32_t to_fixed(double k) {
  return (int32_t)(k < 0 ? -0.5 + k * (1 << PRECISION_BITS) : 0.5 + k * (1 << PRECISION_BITS));
}

static uint8_t clip8(int32_t v) {
  v >>= PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v;
}

static void axis_free(axis_t *a) {
  free(a->start);
  free(a->count);
  free(a->k);
  free(a->pad_k);
}

/*
 * out_n outputs; content of `content_n` decoded pixels (full-resolution length `full_len`, decoded at r = M/8)
 * placed at `off` in a virtual extent of `extent` full-resolution pixels; output index xx samples the extent at
 * ((xx + shift) + 0.5) * scale. Returns 0 on allocation failure.
 */
static int axis_init(axis_t *a, int out_n, int content_n, int full_len, double r, int off, int extent, double scale,
                     int shift, int filter) {
  double (*fn)(double) = filter == 1 ? triangle : bicubic;
  double fsupport = filter == 1 ? 1.0 : 2.0;
  double filterscale = scale * r < 1.0 ? 1.0 : scale * r;
  double support = fsupport * filterscale, ss = 1.0 / filterscale;
  int ksize = (int)ceil(support) * 2 + 1;
  double *w = (double *)malloc(sizeof(double) * ksize);
  /* libjpeg rounds the scaled size up, so the last decoded pixel may cover only `last_frac` of content (the rest is
   * libjpeg's edge replication). Next to a pad, that pixel's weight is split: content for the covered part, pad for
   * the rest, as the reference's full-resolution taps would fall. Without a pad it counts as content (the reference
   * clamps its taps at the edge, much the same). */
  int has_pad = extent > full_len;
  double last_frac = 1.0;
  if (r < 1.0 && has_pad) {
    double exact = full_len * r;
    if (content_n > (int)ceil(exact)) content_n = (int)ceil(exact);
    last_frac = exact - (content_n - 1);
  }
  a->out_n = out_n;
  a->ksize = ksize;
  a->start = (int *)malloc(sizeof(int) * out_n);
  a->count = (int *)malloc(sizeof(int) * out_n);
  a->k = (int32_t *)calloc((size_t)out_n * ksize, sizeof(int32_t));
  a->pad_k = (int32_t *)malloc(sizeof(int32_t) * out_n);
  if (!w || !a->start || !a->count || !a->k || !a->pad_k) {
    free(w);
    return 0;
  }
  for (int xx = 0; xx < out_n; xx++) {
    double center = ((double)(xx + shift) + 0.5) * scale;
    int xmin, xmax, coff; /* taps [xmin, xmax) on a grid where content pixel i is grid index i + coff */
    if (r == 1.0) {
      /* Pillow's arithmetic exactly, on the virtual padded image. */
      xmin = (int)(center - support + 0.5);
      if (xmin < 0) xmin = 0;
      xmax = (int)(center + support + 0.5);
      if (xmax > extent) xmax = extent;
      coff = off;
    } else {
      /* The same on the decoded grid; the pad continues it, bounded where its pixel centres leave the extent. */
      center = (center - off) * r;
      int lo = has_pad ? (int)ceil(-off * r - 0.5) : 0, hi = has_pad ? (int)ceil((extent - off) * r - 0.5) : content_n;
      xmin = (int)floor(center - support + 0.5);
      if (xmin < lo) xmin = lo;
      xmax = (int)floor(center + support + 0.5);
      if (xmax > hi) xmax = hi;
      coff = 0;
    }
    int n = xmax - xmin;
    if (n > ksize) n = ksize; /* cannot happen; guards the buffer */
    double ww = 0.0;
    for (int x = 0; x < n; x++) {
      w[x] = fn(((double)(x + xmin) - center + 0.5) * ss);
      ww += w[x];
    }
    int first = -1, cnt = 0;
    int32_t pad = 0, *k = a->k + (size_t)xx * ksize;
    for (int x = 0; x < n; x++) {
      double wn = ww != 0.0 ? w[x] / ww : w[x];
      int i = x + xmin - coff;
      if (i < 0 || i >= content_n) {
        pad += to_fixed(wn);
      } else {
        if (first < 0) first = i;
        if (i == content_n - 1 && last_frac < 1.0) {
          k[cnt++] = to_fixed(wn * last_frac);
          pad += to_fixed(wn * (1.0 - last_frac));
        } else {
          k[cnt++] = to_fixed(wn);
        }
      }
    }
    a->start[xx] = first < 0 ? 0 : first;
    a->count[xx] = cnt;
    a->pad_k[xx] = pad;
  }
  free(w);
  return 1;
}

static void on_error_exit(j_common_ptr cinfo) {
  error_mgr *err = (error_mgr *)cinfo->err;
  (*cinfo->err->format_message)(cinfo, err->message);
  /* Over max_memory_to_use, libjpeg asks for a backing store (there is none) or reports no memory. */
  int memory = cinfo->err->msg_code == JERR_NO_BACKING_STORE || cinfo->err->msg_code == JERR_OUT_OF_MEMORY;
  err->code = memory ? "JPEG_TOO_LARGE" : "JPEG_ERROR";
  longjmp(err->jump, 1);
}

static void on_error_exit(j_common_ptr cinfo);

static void on_emit_message(j_common_ptr cinfo, int level) {
  error_mgr *err = (error_mgr *)cinfo->err;
  if (level >= 0) return; /* trace messages */
  if (cinfo->err->msg_code == JWRN_JPEG_EOF || cinfo->err->msg_code == JWRN_BOGUS_PROGRESSION) {
    (*cinfo->err->format_message)(cinfo, err->message);
    err->code = cinfo->err->msg_code == JWRN_JPEG_EOF ? "JPEG_TRUNCATED" : "JPEG_BAD_PROGRESSION";
    longjmp(err->jump, 1);
  }
  cinfo->err->num_warnings++;
}

static void on_progress(j_common_ptr cinfo) {
  progress_mgr *pm = (progress_mgr *)cinfo->progress;
  if (!cinfo->is_decompressor) return;
  int scans = ((j_decompress_ptr)cinfo)->input_scan_number;
  if (scans > pm->max_scans) {
    snprintf(pm->err->message, sizeof pm->err->message, "more than %d scans", pm->max_scans);
    pm->err->code = "JPEG_TOO_MANY_SCANS";
    longjmp(pm->err->jump, 1);
  }
}

/* Smallest M in 1..8 with ceil(dim * M / 8) >= need for both sides (libjpeg rounds scaled sizes up). */
static unsigned int pick_scale(unsigned int w, unsigned int h, double need_w, double need_h) {
  for (unsigned int m = 1; m < 8; m++) {
    double sw = (double)(((unsigned long)w * m + 7) / 8), sh = (double)(((unsigned long)h * m + 7) / 8);
    if (sw >= need_w && sh >= need_h) return m;
  }
  return 8;
}

static void fail(job_t *job, const char *code, const char *message) {
  job->code = code;
  snprintf(job->message, sizeof job->message, "%s", message);
}

#define HALF (1 << (PRECISION_BITS - 1))

/* Horizontal pass over one decoded RGBX row into three 8-bit planes of S. Plain C: any CPU. */
static void hrow_scalar(const uint8_t *row, const axis_t *ax, const int pad[3], uint8_t *o0, uint8_t *o1,
                        uint8_t *o2) {
  for (int xx = 0; xx < ax->out_n; xx++) {
    const int32_t *k = ax->k + (size_t)xx * ax->ksize;
    const uint8_t *s = row + (size_t)ax->start[xx] * 4;
    int32_t pk = ax->pad_k[xx];
    int32_t a0 = HALF + pad[0] * pk, a1 = HALF + pad[1] * pk, a2 = HALF + pad[2] * pk;
    for (int t = 0, n = ax->count[xx]; t < n; t++, s += 4) {
      a0 += s[0] * k[t];
      a1 += s[1] * k[t];
      a2 += s[2] * k[t];
    }
    o0[xx] = clip8(a0);
    o1[xx] = clip8(a1);
    o2[xx] = clip8(a2);
  }
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
/* acc += one RGBX pixel x weight, per lane. */
__attribute__((target("sse4.1"))) static inline __m128i tap1(__m128i acc, const uint8_t *s, int32_t k) {
  int32_t px;
  memcpy(&px, s, 4);
  return _mm_add_epi32(acc, _mm_mullo_epi32(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(px)), _mm_set1_epi32(k)));
}

/* clip8 of the R, G, B lanes (arithmetic shift, then saturate to 0..255) into the three planes at xx. */
__attribute__((target("sse4.1"))) static inline void store_rgb(__m128i acc, uint8_t *o0, uint8_t *o1, uint8_t *o2,
                                                               int xx) {
  __m128i v = _mm_packus_epi16(_mm_packs_epi32(_mm_srai_epi32(acc, PRECISION_BITS), acc), acc);
  int32_t out = _mm_cvtsi128_si32(v);
  o0[xx] = (uint8_t)out;
  o1[xx] = (uint8_t)(out >> 8);
  o2[xx] = (uint8_t)(out >> 16);
}

/* The same with one pixel's four channels per 128-bit register (SSE4.1: pmovzxbd, pmulld); identical integers. */
__attribute__((target("sse4.1"))) static void hrow_sse41(const uint8_t *row, const axis_t *ax, const int pad[3],
                                                          uint8_t *o0, uint8_t *o1, uint8_t *o2) {
  const __m128i padv = _mm_setr_epi32(pad[0], pad[1], pad[2], 0), half = _mm_set1_epi32(HALF);
  for (int xx = 0; xx < ax->out_n; xx++) {
    const int32_t *k = ax->k + (size_t)xx * ax->ksize;
    const uint8_t *s = row + (size_t)ax->start[xx] * 4;
    __m128i acc = _mm_add_epi32(half, _mm_mullo_epi32(padv, _mm_set1_epi32(ax->pad_k[xx])));
    for (int t = 0, n = ax->count[xx]; t < n; t++, s += 4) acc = tap1(acc, s, k[t]);
    store_rgb(acc, o0, o1, o2, xx);
  }
}

/* Two taps per step: 8 bytes (two RGBX pixels) widened to eight int32 lanes, times each tap's weight spread over four
 * lanes by a permute (a pre-spread kernel is 4x larger and, at 384 outputs, no longer fits L1: it was slower); the
 * halves are summed at the end. Identical integers again. */
__attribute__((target("avx2"))) static void hrow_avx2(const uint8_t *row, const axis_t *ax, const int pad[3],
                                                      uint8_t *o0, uint8_t *o1, uint8_t *o2) {
  const __m128i padv = _mm_setr_epi32(pad[0], pad[1], pad[2], 0), half = _mm_set1_epi32(HALF);
  const __m256i spread = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
  for (int xx = 0; xx < ax->out_n; xx++) {
    const int32_t *k = ax->k + (size_t)xx * ax->ksize;
    const uint8_t *s = row + (size_t)ax->start[xx] * 4;
    int n = ax->count[xx], t = 0;
    __m256i acc2 = _mm256_setzero_si256();
    for (; t + 2 <= n; t += 2, s += 8) {
      __m256i px = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)s));
      __m256i kv = _mm256_permutevar8x32_epi32(_mm256_castsi128_si256(_mm_loadl_epi64((const __m128i *)(k + t))), spread);
      acc2 = _mm256_add_epi32(acc2, _mm256_mullo_epi32(px, kv));
    }
    __m128i acc = _mm_add_epi32(_mm256_castsi256_si128(acc2), _mm256_extracti128_si256(acc2, 1));
    acc = _mm_add_epi32(acc, _mm_add_epi32(half, _mm_mullo_epi32(padv, _mm_set1_epi32(ax->pad_k[xx]))));
    if (t < n) acc = tap1(acc, s, k[t]);
    store_rgb(acc, o0, o1, o2, xx);
  }
}

/*
 * The horizontal pass vectorised across output pixels, for the common case where 8 neighbouring outputs read
 * within 16 decoded pixels (reductions up to ~1.3x, which DCT scaling leaves): per block of 8 outputs and per
 * channel, one 16-byte load of the channel's plane, then per tap a byte shuffle gathers the 8 outputs' pixels,
 * widened to int32 and multiplied by the 8 weights. ~16 instructions per output pixel instead of ~44 for
 * hrow_avx2's one-pixel-at-a-time loop; the same integers, summed in another order.
 */
typedef struct {
  int nblocks, maxk;
  int *base;       /* per block: the decoded pixel its 16-byte window starts at */
  int *ntaps;      /* per block: taps of its widest output */
  uint8_t *mask;   /* per block and tap: 16-byte shuffle (low 8 bytes: each output's pixel in the window) */
  int32_t *w;      /* per block and tap: the 8 outputs' weights (0 past an output's own taps) */
  int32_t *bias;   /* per block and channel: HALF + pad colour x pad weight, 8 outputs */
  uint8_t *planes; /* one decoded row split into three channel planes (+16 bytes of slack each) */
  size_t plane_len;
} hblocks_t;

static void hblocks_free(hblocks_t *b) {
  free(b->base);
  free(b->ntaps);
  free(b->mask);
  free(b->w);
  free(b->bias);
  free(b->planes);
  memset(b, 0, sizeof *b);
}

/* 1 when every block fits its window (and the tables were allocated), else 0 and nothing kept. */
static int hblocks_init(hblocks_t *b, const axis_t *ax, int ws, const int pad[3]) {
  memset(b, 0, sizeof *b);
  if (ax->out_n % 8 != 0) return 0;
  int nb = ax->out_n / 8, maxk = 0;
  for (int xx = 0; xx < ax->out_n; xx++) maxk = ax->count[xx] > maxk ? ax->count[xx] : maxk;
  b->nblocks = nb;
  b->maxk = maxk;
  b->base = (int *)malloc(sizeof(int) * nb);
  b->ntaps = (int *)malloc(sizeof(int) * nb);
  b->mask = (uint8_t *)calloc((size_t)nb * maxk * 16, 1);
  b->w = (int32_t *)calloc((size_t)nb * maxk * 8, sizeof(int32_t));
  b->bias = (int32_t *)malloc(sizeof(int32_t) * nb * 3 * 8);
  b->plane_len = (size_t)ws + 32;
  b->planes = (uint8_t *)calloc(b->plane_len * 3, 1);
  if (!b->base || !b->ntaps || !b->mask || !b->w || !b->bias || !b->planes) {
    hblocks_free(b);
    return 0;
  }
  for (int bi = 0; bi < nb; bi++) {
    int x0 = bi * 8, base = ax->start[x0], k = 0;
    for (int j = 0; j < 8; j++) {
      int xx = x0 + j, c = ax->count[xx];
      if (c > k) k = c;
      if (c > 0 && (ax->start[xx] < base || ax->start[xx] + c - base > 16)) {
        hblocks_free(b);
        return 0;
      }
      for (int t = 0; t < c; t++) {
        b->mask[((size_t)bi * maxk + t) * 16 + j] = (uint8_t)(ax->start[xx] + t - base);
        b->w[((size_t)bi * maxk + t) * 8 + j] = ax->k[(size_t)xx * ax->ksize + t];
      }
      for (int ch = 0; ch < 3; ch++) b->bias[((size_t)bi * 3 + ch) * 8 + j] = HALF + pad[ch] * ax->pad_k[xx];
    }
    b->base[bi] = base;
    b->ntaps[bi] = k;
  }
  return 1;
}

__attribute__((target("avx2"))) static void hrow_blocks_avx2(const uint8_t *row, int ws, hblocks_t *b,
                                                             uint8_t *o0, uint8_t *o1, uint8_t *o2) {
  /* RGBX -> three planes, 16 pixels per step: bytes to [R0-3 G0-3 B0-3 X0-3] per 4 pixels, then a 4x4 transpose. */
  const __m128i split = _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  uint8_t *pr = b->planes, *pg = pr + b->plane_len, *pb = pg + b->plane_len;
  int x = 0;
  for (; x + 16 <= ws; x += 16) {
    const __m128i *src = (const __m128i *)(row + (size_t)x * 4);
    __m128i q0 = _mm_shuffle_epi8(_mm_loadu_si128(src), split);
    __m128i q1 = _mm_shuffle_epi8(_mm_loadu_si128(src + 1), split);
    __m128i q2 = _mm_shuffle_epi8(_mm_loadu_si128(src + 2), split);
    __m128i q3 = _mm_shuffle_epi8(_mm_loadu_si128(src + 3), split);
    __m128i t0 = _mm_unpacklo_epi32(q0, q1), t1 = _mm_unpacklo_epi32(q2, q3);
    __m128i t2 = _mm_unpackhi_epi32(q0, q1), t3 = _mm_unpackhi_epi32(q2, q3);
    _mm_storeu_si128((__m128i *)(pr + x), _mm_unpacklo_epi64(t0, t1));
    _mm_storeu_si128((__m128i *)(pg + x), _mm_unpackhi_epi64(t0, t1));
    _mm_storeu_si128((__m128i *)(pb + x), _mm_unpacklo_epi64(t2, t3));
  }
  for (; x < ws; x++) {
    pr[x] = row[(size_t)x * 4];
    pg[x] = row[(size_t)x * 4 + 1];
    pb[x] = row[(size_t)x * 4 + 2];
  }
  uint8_t *planes[3] = {pr, pg, pb}, *outs[3] = {o0, o1, o2};
  for (int bi = 0; bi < b->nblocks; bi++) {
    const uint8_t *mask = b->mask + (size_t)bi * b->maxk * 16;
    const int32_t *w = b->w + (size_t)bi * b->maxk * 8;
    int n = b->ntaps[bi];
    for (int c = 0; c < 3; c++) {
      __m128i win = _mm_loadu_si128((const __m128i *)(planes[c] + b->base[bi]));
      __m256i acc = _mm256_loadu_si256((const __m256i *)(b->bias + ((size_t)bi * 3 + c) * 8));
      for (int t = 0; t < n; t++) {
        __m128i px = _mm_shuffle_epi8(win, _mm_loadu_si128((const __m128i *)(mask + t * 16)));
        acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(px),
                                                       _mm256_loadu_si256((const __m256i *)(w + t * 8))));
      }
      acc = _mm256_srai_epi32(acc, PRECISION_BITS);
      __m128i v = _mm_packs_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
      _mm_storel_epi64((__m128i *)(outs[c] + bi * 8), _mm_packus_epi16(v, v));
    }
  }
}
#define TARGET_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define TARGET_CLONES
#endif

/*
 * Vertical pass for one output row of one channel: taps over the planar horizontal output, then the normalised
 * float into the tensor. Written for the auto-vectoriser; compiled for AVX2 and for the baseline, picked at load.
 */
TARGET_CLONES static void vrow(const uint8_t *plane, int S, int y0, int start, int count, const int32_t *k,
                               int32_t pad_k, const uint8_t *prow, int32_t *acc, float scale, float offset,
                               float *out) {
  for (int x = 0; x < S; x++) acc[x] = HALF + prow[x] * pad_k;
  for (int t = 0; t < count; t++) {
    const uint8_t *row = plane + (size_t)(start + t - y0) * S;
    int32_t kt = k[t];
    for (int x = 0; x < S; x++) acc[x] += row[x] * kt;
  }
  for (int x = 0; x < S; x++) {
    int32_t v = acc[x] >> PRECISION_BITS;
    v = v < 0 ? 0 : v > 255 ? 255 : v;
    out[x] = (float)v * scale + offset;
  }
}

/*
 * The resampler's state for one image. Rows arrive from libjpeg one scanline at a time and are resampled
 * horizontally at once, so only the S-wide intermediate rows are kept, never the decoded image: a 50-megapixel JPEG
 * decoded at full size holds ~7000 x S x 3 bytes here, not 200 MB.
 */
typedef struct {
  axis_t ax, ay;
  int S, ws, hs, y0, y1;
  int pad[3];
  size_t hplane;
  uint8_t *tmp, *prow, *scan;
  int32_t *acc;
  void (*hrow)(const uint8_t *, const axis_t *, const int[3], uint8_t *, uint8_t *, uint8_t *);
#if defined(__x86_64__) || defined(__i386__)
  hblocks_t blocks; /* in use when blocks.planes is set */
#endif
} resampler_t;

static void resampler_free(resampler_t *rs) {
  if (rs == NULL) return;
  free(rs->tmp);
  free(rs->prow);
  free(rs->scan);
  free(rs->acc);
#if defined(__x86_64__) || defined(__i386__)
  hblocks_free(&rs->blocks);
#endif
  axis_free(&rs->ax);
  axis_free(&rs->ay);
  free(rs);
}

/* Sets up the taps for a decoded size ws x hs (scale r of the job's width x height); NULL when out of memory. */
static resampler_t *resampler_new(const job_t *job, int ws, int hs, double r) {
  const double *p = job->p;
  int S = (int)p[0], mode = (int)p[1], filter = (int)p[2];
  int W = (int)job->width, H = (int)job->height;
  int side = W > H ? W : H;
  resampler_t *rs = (resampler_t *)calloc(1, sizeof(resampler_t));
  if (rs == NULL) return NULL;
  rs->S = S;
  rs->ws = ws;
  rs->hs = hs;
  for (int c = 0; c < 3; c++) rs->pad[c] = (int)p[3 + c];
  int ok;
  if (mode == MODE_PAD) {
    ok = axis_init(&rs->ax, S, ws, W, r, (side - W) >> 1, side, (double)side / S, 0, filter) &&
         axis_init(&rs->ay, S, hs, H, r, (side - H) >> 1, side, (double)side / S, 0, filter);
  } else if (mode == MODE_CROP) {
    int rw = (int)p[12], rh = (int)p[13];
    ok = axis_init(&rs->ax, S, ws, W, r, 0, W, (double)W / rw, (rw - S) >> 1, filter) &&
         axis_init(&rs->ay, S, hs, H, r, 0, H, (double)H / rh, (rh - S) >> 1, filter);
  } else {
    ok = axis_init(&rs->ax, S, ws, W, r, 0, W, (double)W / S, 0, filter) &&
         axis_init(&rs->ay, S, hs, H, r, 0, H, (double)H / S, 0, filter);
  }
  if (!ok) {
    resampler_free(rs);
    return NULL;
  }
  /* Rows of the decoded image the vertical pass reads. */
  int y0 = hs, y1 = 0;
  for (int yy = 0; yy < S; yy++) {
    if (rs->ay.count[yy] == 0) continue;
    if (rs->ay.start[yy] < y0) y0 = rs->ay.start[yy];
    if (rs->ay.start[yy] + rs->ay.count[yy] > y1) y1 = rs->ay.start[yy] + rs->ay.count[yy];
  }
  if (y1 < y0) y1 = y0;
  rs->y0 = y0;
  rs->y1 = y1;
  rs->hplane = (size_t)(y1 - y0 + 1) * S;
  rs->tmp = (uint8_t *)malloc(rs->hplane * 3);
  rs->prow = (uint8_t *)malloc((size_t)S * 3);
  rs->scan = (uint8_t *)malloc((size_t)ws * 4 * SCAN_ROWS);
  rs->acc = (int32_t *)malloc(sizeof(int32_t) * S);
  if (!rs->tmp || !rs->prow || !rs->scan || !rs->acc) {
    resampler_free(rs);
    return NULL;
  }
  /* A pad row (all taps on the pad) resamples horizontally to prow. */
  for (int xx = 0; xx < S; xx++) {
    int32_t all = rs->ax.pad_k[xx];
    const int32_t *k = rs->ax.k + (size_t)xx * rs->ax.ksize;
    for (int t = 0; t < rs->ax.count[xx]; t++) all += k[t];
    for (int c = 0; c < 3; c++) rs->prow[c * S + xx] = clip8(HALF + rs->pad[c] * all);
  }
  rs->hrow = hrow_scalar;
#if defined(__x86_64__) || defined(__i386__)
  if (__builtin_cpu_supports("avx2")) {
    rs->hrow = hrow_avx2;
    hblocks_init(&rs->blocks, &rs->ax, ws, rs->pad);
  } else if (__builtin_cpu_supports("sse4.1")) {
    rs->hrow = hrow_sse41;
  }
#endif
  return rs;
}

/* Horizontal pass of decoded row y (RGBX), if the vertical pass reads it. */
static void resampler_row(resampler_t *rs, int y, const uint8_t *row) {
  if (y < rs->y0 || y >= rs->y1) return;
  size_t o = (size_t)(y - rs->y0) * rs->S;
#if defined(__x86_64__) || defined(__i386__)
  if (rs->blocks.planes != NULL) {
    hrow_blocks_avx2(row, rs->ws, &rs->blocks, rs->tmp + o, rs->tmp + rs->hplane + o, rs->tmp + 2 * rs->hplane + o);
    return;
  }
#endif
  rs->hrow(row, &rs->ax, rs->pad, rs->tmp + o, rs->tmp + rs->hplane + o, rs->tmp + 2 * rs->hplane + o);
}

/* Vertical pass per channel, straight into the normalised planes of the job's tensor. */
static void resampler_finish(resampler_t *rs, job_t *job) {
  const double *p = job->p;
  int S = rs->S;
  size_t plane = (size_t)S * S;
  for (int c = 0; c < 3; c++) {
    for (int yy = 0; yy < S; yy++) {
      vrow(rs->tmp + c * rs->hplane, S, rs->y0, rs->ay.start[yy], rs->ay.count[yy],
           rs->ay.k + (size_t)yy * rs->ay.ksize, rs->ay.pad_k[yy], rs->prow + c * S, rs->acc, (float)p[6 + c],
           (float)p[9 + c], job->out + c * plane + (size_t)yy * S);
    }
  }
}

static void execute(napi_env env, void *data) {
  (void)env;
  job_t *job = (job_t *)data;
  struct jpeg_decompress_struct cinfo;
  error_mgr err;
  progress_mgr progress;
  resampler_t *volatile rs = NULL; /* volatile: set between setjmp and a longjmp back to it */
  memset(&cinfo, 0, sizeof cinfo);
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = on_error_exit;
  err.pub.emit_message = on_emit_message;
  err.code = NULL;
  err.message[0] = 0;
  const double max_pixels = job->p[17] > 0 ? job->p[17] : DEFAULT_MAX_PIXELS;
  memset(&progress, 0, sizeof progress);
  progress.pub.progress_monitor = on_progress;
  progress.err = &err;
  progress.max_scans = job->p[18] > 0 ? (int)job->p[18] : DEFAULT_MAX_SCANS;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    resampler_free(rs);
    fail(job, err.code, err.message);
    return;
  }
  jpeg_create_decompress(&cinfo);
  cinfo.progress = &progress.pub;
  /* Whole-image buffers (progressive and multi-scan JPEGs keep every DCT coefficient: 2 bytes per sample) for up to
   * 3 full-size components at the pixel limit; above it libjpeg asks for a backing store and fails. */
  cinfo.mem->max_memory_to_use = (long)(max_pixels * 3 * 2 * 1.1) + MEMORY_SLACK;
  jpeg_mem_src(&cinfo, job->input, (unsigned long)job->input_len);
  jpeg_read_header(&cinfo, TRUE);
  /* The size the caller checked must be the size decoded: a marker parsed differently on each side could otherwise
   * hide a 65500x65500 frame header behind a 64x64 one. */
  if ((job->p[15] > 0 && cinfo.image_width != (JDIMENSION)job->p[15]) ||
      (job->p[16] > 0 && cinfo.image_height != (JDIMENSION)job->p[16])) {
    err.code = "JPEG_SIZE_MISMATCH";
    snprintf(err.message, sizeof err.message, "libjpeg reads a %ux%u frame, the markers said %.0fx%.0f",
             cinfo.image_width, cinfo.image_height, job->p[15], job->p[16]);
    longjmp(err.jump, 1);
  }
  if ((double)cinfo.image_width * cinfo.image_height > max_pixels ||
      (double)cinfo.image_width * cinfo.image_height * cinfo.num_components > max_pixels * 3) {
    err.code = "JPEG_TOO_LARGE";
    snprintf(err.message, sizeof err.message, "%ux%u JPEG with %d components exceeds the %.0f-pixel limit",
             cinfo.image_width, cinfo.image_height, cinfo.num_components, max_pixels);
    longjmp(err.jump, 1);
  }
  if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
    jpeg_destroy_decompress(&cinfo);
    fail(job, "JPEG_UNSUPPORTED", "CMYK/YCCK JPEG is left to the general decoder");
    return;
  }
  const double *p = job->p;
  int S = (int)p[0], mode = (int)p[1];
  unsigned int W = cinfo.image_width, H = cinfo.image_height, side = W > H ? W : H;
  /* The content's footprint in the output, which the decoded size must cover (times the minimum ratio). */
  double need_w, need_h, gap = p[14];
  if (mode == MODE_PAD) {
    need_w = (double)W * S / side;
    need_h = (double)H * S / side;
  } else if (mode == MODE_CROP) {
    need_w = p[12];
    need_h = p[13];
  } else {
    need_w = S;
    need_h = S;
  }
  cinfo.out_color_space = JCS_EXT_RGBX; /* 4-byte pixels: one SIMD lane each in the horizontal pass */
  cinfo.scale_num = gap > 0 && gap < 8 ? pick_scale(W, H, need_w * gap, need_h * gap) : 8;
  cinfo.scale_denom = 8;
  jpeg_start_decompress(&cinfo);
  job->width = W;
  job->height = H;
  job->scale_num = cinfo.scale_num;
  int ws = (int)cinfo.output_width, hs = (int)cinfo.output_height;
  rs = resampler_new(job, ws, hs, cinfo.scale_num / 8.0);
  if (rs == NULL) {
    jpeg_destroy_decompress(&cinfo);
    fail(job, "JPEG_ERROR", "out of memory while setting up the resize");
    return;
  }
  size_t stride = (size_t)ws * 4;
  while ((int)cinfo.output_scanline < hs) {
    int y = (int)cinfo.output_scanline;
    JSAMPROW rows[SCAN_ROWS];
    for (int i = 0; i < SCAN_ROWS; i++) rows[i] = rs->scan + (size_t)i * stride;
    int n = (int)jpeg_read_scanlines(&cinfo, rows, SCAN_ROWS);
    if (n == 0) { /* only a suspending source returns none, and memory sources never suspend */
      err.code = "JPEG_ERROR";
      snprintf(err.message, sizeof err.message, "libjpeg returned no scanlines at row %d", y);
      longjmp(err.jump, 1);
    }
    for (int i = 0; i < n; i++) resampler_row(rs, y + i, rows[i]);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  resampler_finish(rs, job);
  resampler_free(rs);
}

static napi_value make_error(napi_env env, const char *code, const char *message) {
  napi_value c, m, e;
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &c);
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &m);
  napi_create_error(env, c, m, &e);
  return e;
}

static void set_uint(napi_env env, napi_value obj, const char *key, unsigned int v) {
  napi_value n;
  napi_create_uint32(env, v, &n);
  napi_set_named_property(env, obj, key, n);
}

static void complete(napi_env env, napi_status status, void *data) {
  job_t *job = (job_t *)data;
  if (status != napi_ok && job->code == NULL) fail(job, "JPEG_ERROR", "the decode job was cancelled");
  if (job->code != NULL) {
    napi_reject_deferred(env, job->deferred, make_error(env, job->code, job->message));
  } else {
    napi_value result;
    napi_create_object(env, &result);
    set_uint(env, result, "width", job->width);
    set_uint(env, result, "height", job->height);
    set_uint(env, result, "scaleNum", job->scale_num);
    napi_resolve_deferred(env, job->deferred, result);
  }
  napi_delete_reference(env, job->input_ref);
  napi_delete_reference(env, job->out_ref);
  napi_delete_async_work(env, job->work);
  free(job);
}

static int typed_array(napi_env env, napi_value v, napi_typedarray_type want, void **data, size_t *length) {
  bool is = false;
  napi_typedarray_type type;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return 0;
  if (napi_get_typedarray_info(env, v, &type, length, data, NULL, NULL) != napi_ok) return 0;
  return type == want;
}

static napi_value prepare(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], promise, name;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  bool is_buffer = false;
  void *bytes = NULL, *out = NULL, *params = NULL;
  size_t input_len = 0, out_len = 0, n_params = 0;
  if (argc < 3 || napi_is_buffer(env, argv[0], &is_buffer) != napi_ok || !is_buffer ||
      !typed_array(env, argv[1], napi_float32_array, &out, &out_len) ||
      !typed_array(env, argv[2], napi_float64_array, &params, &n_params) || n_params < N_PARAMS_MIN) {
    napi_throw_type_error(env, "JPEG_ARGS", "prepare(bytes: Buffer, out: Float32Array, params: Float64Array(15-19))");
    return NULL;
  }
  double p[N_PARAMS] = {0};
  memcpy(p, params, sizeof(double) * (n_params < N_PARAMS ? n_params : N_PARAMS));
  double S = p[0];
  if (!(S >= 1 && S <= 8192) || out_len != (size_t)(3 * S * S) || !(p[1] >= 0 && p[1] <= 2) ||
      !(p[2] >= 0 && p[2] <= 1) || (p[1] == MODE_CROP && !(p[12] >= S && p[13] >= S && p[12] < 1e6 && p[13] < 1e6)) ||
      !(p[15] >= 0 && p[15] <= 65535 && p[16] >= 0 && p[16] <= 65535) || !(p[17] >= 0 && p[17] <= 1e12) ||
      !(p[18] >= 0 && p[18] <= 1e6)) {
    napi_throw_range_error(env, "JPEG_ARGS", "prepare: params out of range or tensor of the wrong length");
    return NULL;
  }
  napi_get_buffer_info(env, argv[0], &bytes, &input_len);
  job_t *job = (job_t *)calloc(1, sizeof(job_t));
  if (job == NULL) {
    napi_throw_error(env, "JPEG_ERROR", "out of memory");
    return NULL;
  }
  job->input = (const unsigned char *)bytes;
  job->input_len = input_len;
  job->out = (float *)out;
  memcpy(job->p, p, sizeof job->p);
  /* Both arrays must outlive the job: strong references until complete(). */
  napi_create_reference(env, argv[0], 1, &job->input_ref);
  napi_create_reference(env, argv[1], 1, &job->out_ref);
  napi_create_promise(env, &job->deferred, &promise);
  napi_create_string_utf8(env, "mlmf.jpegPrepare", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, execute, complete, job, &job->work);
  napi_queue_async_work(env, job->work);
  return promise;
}

NAPI_MODULE_INIT() {
  napi_value fn, version;
  napi_create_function(env, "prepare", NAPI_AUTO_LENGTH, prepare, NULL, &fn);
  napi_set_named_property(env, exports, "prepare", fn);
  napi_create_string_utf8(env, STRINGIFY(LIBJPEG_TURBO_VERSION), NAPI_AUTO_LENGTH, &version);
  napi_set_named_property(env, exports, "libjpegTurboVersion", version);
  return exports;
}
