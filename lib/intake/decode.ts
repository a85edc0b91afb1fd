/**
 * Decoding untrusted image bytes with sharp: format sniffing, header checks before any pixel is decoded, and the
 * normalisation every model input needs (EXIF orientation, first frame, 8-bit sRGB, no alpha).
 */
import sharp, { type Metadata, type Sharp } from 'sharp';
import { tooSmall, undecodable } from './reject.ts';
import { RejectError } from '../types.ts';

/** Raster formats the intake accepts, by magic bytes. SVG is never accepted: it is a document, not pixels. */
export type ImageFormat = 'jpeg' | 'png' | 'gif' | 'webp' | 'heif' | 'tiff' | 'bmp';

const HEIF_BRANDS = new Set(['avif', 'avis', 'heic', 'heix', 'hevc', 'hevx', 'heim', 'heis', 'mif1', 'msf1']);

/** Identifies a raster format from its leading bytes, or undefined when it is none we accept. */
export function sniffFormat(b: Buffer): ImageFormat | undefined {
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return 'jpeg';
  if (b.length >= 8 && b.readUInt32BE(0) === 0x89504e47 && b.readUInt32BE(4) === 0x0d0a1a0a) return 'png';
  if (b.length >= 6 && (b.toString('latin1', 0, 6) === 'GIF87a' || b.toString('latin1', 0, 6) === 'GIF89a')) {
    return 'gif';
  }
  if (b.length >= 12 && b.toString('latin1', 0, 4) === 'RIFF' && b.toString('latin1', 8, 12) === 'WEBP') return 'webp';
  if (b.length >= 12 && b.toString('latin1', 4, 8) === 'ftyp' && HEIF_BRANDS.has(b.toString('latin1', 8, 12))) {
    return 'heif';
  }
  if (b.length >= 4 && (b.readUInt32BE(0) === 0x49492a00 || b.readUInt32BE(0) === 0x4d4d002a)) return 'tiff';
  if (b.length >= 14 && b[0] === 0x42 && b[1] === 0x4d) return 'bmp';
  return undefined;
}

/** A short label for bytes that are not an accepted image, for the reject detail (operators ask "what was it?"). */
export function describeUnknown(b: Buffer): string {
  const head = b
    .subarray(0, 512)
    .toString('utf8')
    .replace(/^\uFEFF/, '')
    .trimStart()
    .toLowerCase();
  if (head.startsWith('<?xml') || head.startsWith('<svg') || head.includes('<svg')) return 'svg';
  if (head.startsWith('<!doctype html') || head.startsWith('<html')) return 'html';
  if (head.startsWith('{') || head.startsWith('[')) return 'json';
  return 'unknown';
}

export interface DecodeLimits {
  /** Largest width x height decoded; bigger headers are refused before decoding (decompression bombs). */
  readonly maxPixels: number;
  /** Smallest accepted shorter side, in pixels. */
  readonly minSide: number;
  /** Largest accepted long/short side ratio. */
  readonly maxAspectRatio: number;
  /**
   * Most start-of-scan markers a JPEG may hold (default: no limit). Decode cost grows with pixels x scans, in libvips
   * as in libjpeg, and neither can be interrupted: thousands of scans are minutes of CPU on a libuv pool thread.
   */
  readonly maxJpegScans?: number;
}

export interface ImageHeader {
  readonly format: ImageFormat;
  /** Displayed size, i.e. after EXIF orientation. */
  readonly width: number;
  readonly height: number;
  readonly hasAlpha: boolean;
  /** EXIF orientation, 1 (as stored) to 8. */
  readonly orientation: number;
  /** libvips' interpretation of the stored pixels ('srgb', 'b-w', 'cmyk', ...). */
  readonly space: string | undefined;
}

/**
 * Sniffs and reads the header only, then applies the size rules; no pixel data is decoded, so a 20000x20000 bomb is
 * refused in microseconds.
 */
export async function inspect(bytes: Buffer, limits: DecodeLimits): Promise<ImageHeader> {
  const format = sniffFormat(bytes);
  if (format === undefined) {
    const looksLike = describeUnknown(bytes);
    throw undecodable('unsupported_format', `not a supported raster image (looks like ${looksLike})`, {
      format: looksLike,
    });
  }
  let meta: Pick<Metadata, 'width' | 'height' | 'pageHeight' | 'orientation' | 'hasAlpha'> & { space?: string };
  // JPEG (most crawled images): the markers are read here, ~0.15 ms of libvips call less per image. Anything they do
  // not state plainly goes to sharp, as every other format does.
  const jpeg = format === 'jpeg' ? readJpegHeader(bytes) : undefined;
  if (jpeg) {
    meta = { ...jpeg, hasAlpha: false, space: JPEG_SPACES[jpeg.components] };
  } else {
    try {
      meta = await sharp(bytes, { limitInputPixels: false }).metadata();
    } catch (err) {
      throw decodeError(err, format);
    }
  }
  if (format === 'jpeg' && limits.maxJpegScans !== undefined) {
    const scans = countJpegScans(bytes, limits.maxJpegScans + 1);
    if (scans > limits.maxJpegScans) {
      throw undecodable('decode_error', `jpeg has more than ${limits.maxJpegScans} scans`, {
        format,
        scans: `>${limits.maxJpegScans}`,
        maxScans: limits.maxJpegScans,
      });
    }
  }
  const rawW = meta.width ?? 0;
  const rawH = meta.pageHeight ?? meta.height ?? 0;
  if (rawW <= 0 || rawH <= 0) throw undecodable('decode_error', `${format} header has no dimensions`, { format });
  if (rawW * rawH > limits.maxPixels) {
    throw undecodable('too_many_pixels', `${rawW}x${rawH} ${format} exceeds the ${limits.maxPixels}-pixel limit`, {
      format,
      width: rawW,
      height: rawH,
      maxPixels: limits.maxPixels,
    });
  }
  const swap = (meta.orientation ?? 1) >= 5; // orientations 5-8 transpose the image
  const width = swap ? rawH : rawW;
  const height = swap ? rawW : rawH;
  const short = Math.min(width, height);
  if (short < limits.minSide) {
    throw tooSmall(`${width}x${height} image is smaller than ${limits.minSide} px on its short side`, {
      width,
      height,
      minSide: limits.minSide,
    });
  }
  const aspectRatio = Math.max(width, height) / short;
  if (aspectRatio > limits.maxAspectRatio) {
    throw tooSmall(`${width}x${height} image has aspect ratio ${aspectRatio.toFixed(2)} > ${limits.maxAspectRatio}`, {
      width,
      height,
      aspectRatio: Math.round(aspectRatio * 100) / 100,
      max: limits.maxAspectRatio,
    });
  }
  return { format, width, height, hasAlpha: meta.hasAlpha, orientation: meta.orientation ?? 1, space: meta.space };
}

/** libvips' interpretation of a JPEG by its component count (4: CMYK or YCCK, which libvips reads as CMYK). */
const JPEG_SPACES: Record<number, string> = { 1: 'b-w', 3: 'srgb', 4: 'cmyk' };

/**
 * Markers with a length that may come before the first scan, as libjpeg reads them: SOFn (C0-CF less C4, C8, CC),
 * DHT (C4), DAC (CC), DQT (DB), DRI (DD), APPn (E0-EF), COM (FE).
 */
function lengthMarkerBeforeScan(m: number): boolean {
  return (m >= 0xc0 && m <= 0xcf && m !== 0xc8) || m === 0xdb || m === 0xdd || (m >= 0xe0 && m <= 0xef) || m === 0xfe;
}

/**
 * A JPEG's size, component count and EXIF orientation from its markers (up to the first scan), or undefined when
 * they do not read cleanly: no frame header, a zero height (set by a later DNL marker), a segment running past the
 * end, an odd component count, an unreadable Exif block or orientation. Never throws on any input.
 *
 * It reads only what it understands, since the decoder must see the same frame header: a marker is FF then a code
 * that is neither 00 nor FF, optionally after FF fill bytes (T.81 B.1.1.2); RSTn and TEM stand alone; a second SOI,
 * an EOI, FF 00 (a stuffed zero, data not a marker: libjpeg skips it and scans on for the next FF, so a "length"
 * after it could hide a frame header from this reader), bytes other than FF where a marker belongs, reserved codes
 * (JPG, JPGn, RES, DNL before the scan) all give undefined, and sharp, which reads the markers as libjpeg does, sizes
 * the image instead.
 */
export function readJpegHeader(
  b: Buffer,
): { width: number; height: number; components: number; orientation: number } | undefined {
  let frame: { width: number; height: number; components: number } | undefined;
  let orientation: number | undefined;
  let i = 2;
  while (i + 4 <= b.length) {
    if (b[i] !== 0xff) return undefined;
    const m = b[i + 1]!;
    if (m === 0xff) {
      i++; // fill byte
      continue;
    }
    if (m === 0x01 || (m >= 0xd0 && m <= 0xd7)) {
      i += 2; // TEM and RSTn: markers without a length
      continue;
    }
    if (m !== 0xda && !lengthMarkerBeforeScan(m)) return undefined; // FF 00, SOI again, EOI, reserved codes
    const len = b.readUInt16BE(i + 2);
    const seg = i + 4;
    const end = i + 2 + len;
    if (len < 2 || end > b.length) return undefined;
    if (m === 0xda) break; // start of scan: every marker libjpeg and libvips read for the header is behind us
    if (m === 0xe1 && orientation === undefined && len >= 8 && b.toString('latin1', seg, seg + 6) === 'Exif\0\0') {
      orientation = exifOrientation(b, seg + 6, end);
      if (orientation === undefined) return undefined;
    } else if (m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc) {
      if (frame || len < 8) return undefined;
      frame = { height: b.readUInt16BE(seg + 1), width: b.readUInt16BE(seg + 3), components: b[seg + 5]! };
    }
    i = end;
  }
  if (!frame || frame.width === 0 || frame.height === 0 || JPEG_SPACES[frame.components] === undefined) {
    return undefined;
  }
  return { ...frame, orientation: orientation ?? 1 };
}

/**
 * Start-of-scan markers (FF DA) in a JPEG, counted up to `stop`. Entropy-coded data stuffs every FF byte as FF 00, so
 * FF DA appears only as a marker or inside a segment's payload (an embedded thumbnail's own scans): never fewer than
 * the scans a decoder reads.
 */
export function countJpegScans(b: Buffer, stop = Infinity): number {
  let n = 0;
  for (let i = b.indexOf(0xff); i >= 0 && i + 1 < b.length && n < stop; i = b.indexOf(0xff, i + 1)) {
    if (b[i + 1] === 0xda) n++;
  }
  return n;
}

/** IFD0's Orientation (0x0112) from the TIFF structure in b[start, end): 1 when absent, undefined when unreadable. */
function exifOrientation(b: Buffer, start: number, end: number): number | undefined {
  if (end - start < 8) return undefined;
  const order = b.toString('latin1', start, start + 2);
  if (order !== 'II' && order !== 'MM') return undefined;
  const le = order === 'II';
  const u16 = (at: number): number => (le ? b.readUInt16LE(at) : b.readUInt16BE(at));
  const u32 = (at: number): number => (le ? b.readUInt32LE(at) : b.readUInt32BE(at));
  if (u16(start + 2) !== 42) return undefined;
  const ifd = start + u32(start + 4);
  if (ifd + 2 > end || ifd < start + 8) return undefined;
  const count = u16(ifd);
  if (ifd + 2 + count * 12 > end) return undefined;
  for (let e = 0; e < count; e++) {
    const at = ifd + 2 + e * 12;
    if (u16(at) !== 0x0112) continue;
    if (u16(at + 2) !== 3 || u32(at + 4) !== 1) return undefined;
    const v = u16(at + 8);
    return v >= 1 && v <= 8 ? v : undefined;
  }
  return 1;
}

/**
 * A sharp pipeline over the image as a model sees it: EXIF-oriented, first frame only, alpha flattened onto
 * `background`, 8-bit sRGB (CMYK, 16-bit, grey all end as 3 uchar channels). Truncated data fails the pipeline.
 */
export function openImage(
  bytes: Buffer,
  header: ImageHeader,
  limits: DecodeLimits,
  background: { r: number; g: number; b: number; alpha?: number },
): Sharp {
  let img = sharp(bytes, {
    failOn: 'truncated',
    limitInputPixels: limits.maxPixels,
    autoOrient: true,
    pages: 1,
  });
  if (header.hasAlpha) img = img.flatten({ background });
  return img.toColourspace('srgb');
}

/** Bytes for the curated shard: the original for jpg/png/webp, else a re-encode (png keeps GIF/alpha crispness). */
export async function encodedForSink(
  bytes: Buffer,
  header: ImageHeader,
  limits: DecodeLimits,
): Promise<{ encoded: Buffer; ext: 'jpg' | 'png' | 'webp' }> {
  if (header.format === 'jpeg') return { encoded: bytes, ext: 'jpg' };
  if (header.format === 'png' || header.format === 'webp') return { encoded: bytes, ext: header.format };
  const img = sharp(bytes, { failOn: 'truncated', limitInputPixels: limits.maxPixels, autoOrient: true, pages: 1 });
  try {
    if (header.hasAlpha || header.format === 'gif') return { encoded: await img.png().toBuffer(), ext: 'png' };
    return { encoded: await img.jpeg({ quality: 90 }).toBuffer(), ext: 'jpg' };
  } catch (err) {
    throw decodeError(err, header.format);
  }
}

/** Maps a sharp/libvips failure to the reject it means. */
export function decodeError(err: unknown, format: string | undefined): RejectError {
  if (err instanceof RejectError) return err;
  const message = err instanceof Error ? err.message : String(err);
  if (/pixel limit/i.test(message)) {
    return undecodable('too_many_pixels', `${format ?? 'image'} exceeds the pixel limit`, { format });
  }
  if (/unsupported image format/i.test(message)) {
    return undecodable('unsupported_format', `${format ?? 'image'} cannot be decoded here`, { format });
  }
  return undecodable('decode_error', `cannot decode ${format ?? 'image'}: ${message.slice(0, 200)}`, {
    format,
    error: message.slice(0, 200),
  });
}
