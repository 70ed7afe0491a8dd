// Binary arrays from the kernel: the CSR heatmap payload of gemscope_widgets/widgets/payload.py and plain
// float32 buffers (feature-pane activations, histograms).
//
//   asBytes(data)                  DataView | ArrayBuffer | Uint8Array -> Uint8Array over the same memory
//   float32Of(view)                little-endian float32 bytes -> Float32Array (copied when misaligned)
//   readUint / readFloat           one array of the payload blob by its ArrayRef (float16 widened exactly)
//   Csr                            a tokens x features matrix: rows, top features, dense columns
//   Payload                        a decoded heatmap payload: CSR block per (prompt, SAE), corpus maxima
//
// The payload's header type (PayloadHeader, ArrayRef) is declared in lib/protocol.ts.
import type { ArrayRef, PayloadHeader, RankBy } from "./protocol";

export type { ArrayRef, PayloadHeader, RankBy };

export type Bytes = DataView | ArrayBuffer | Uint8Array;

/** Little-endian float32 bytes (a binary trait) as a Float32Array; empty for no data. */
export function float32Of(data: Bytes | null | undefined): Float32Array {
  if (!data) return new Float32Array(0);
  const bytes = asBytes(data);
  if (bytes.byteLength % 4 !== 0) throw new Error(`float32 data of ${bytes.byteLength} bytes is not a whole number of values`);
  if (bytes.byteOffset % 4 === 0) return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  return new Float32Array(bytes.slice().buffer); // a view needs an aligned start; copy when it is not
}

const ELEMENT_SIZE: Record<ArrayRef["dtype"], number> = { uint16: 2, uint32: 4, float16: 2, float32: 4 };

/** The blob as bytes, whatever wrapper the host handed over (a DataView from the widget manager). */
export function asBytes(data: Bytes): Uint8Array {
  if (data instanceof Uint8Array) return data;
  if (data instanceof DataView) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return new Uint8Array(data);
}

// A typed-array view needs an aligned start; the blob's own byteOffset inside its buffer may not be.
function aligned(bytes: Uint8Array, ref: ArrayRef): { buffer: ArrayBufferLike; byteOffset: number } {
  const size = ELEMENT_SIZE[ref.dtype];
  const start = bytes.byteOffset + ref.offset;
  const end = ref.offset + ref.length * size;
  if (end > bytes.byteLength) {
    throw new Error(`payload is truncated: an array ends at byte ${end} of ${bytes.byteLength}`);
  }
  if (start % size === 0) return { buffer: bytes.buffer, byteOffset: start };
  const copy = bytes.slice(ref.offset, end);
  return { buffer: copy.buffer, byteOffset: 0 };
}

const HALF_TABLE = (() => {
  const table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    let v: number;
    if (exp === 0) v = frac * 2 ** -24;
    else if (exp === 31) v = frac ? NaN : Infinity;
    else v = (1 + frac / 1024) * 2 ** (exp - 15);
    table[h] = sign * v;
  }
  return table;
})();

/** float16 bits -> exact float32 values. */
export function halfToFloat(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = HALF_TABLE[bits[i]];
  return out;
}

export function readUint(bytes: Uint8Array, ref: ArrayRef): Uint16Array | Uint32Array {
  const { buffer, byteOffset } = aligned(bytes, ref);
  if (ref.dtype === "uint16") return new Uint16Array(buffer, byteOffset, ref.length);
  if (ref.dtype === "uint32") return new Uint32Array(buffer, byteOffset, ref.length);
  throw new Error(`expected an integer array, got ${ref.dtype}`);
}

export function readFloat(bytes: Uint8Array, ref: ArrayRef): Float32Array {
  const { buffer, byteOffset } = aligned(bytes, ref);
  if (ref.dtype === "float16") return halfToFloat(new Uint16Array(buffer, byteOffset, ref.length));
  if (ref.dtype === "float32") return new Float32Array(buffer, byteOffset, ref.length);
  throw new Error(`expected a float array, got ${ref.dtype}`);
}

/** A tokens × features matrix in CSR form; rows are sorted by value, largest first. */
export class Csr {
  constructor(
    readonly indptr: Uint32Array,
    readonly indices: Uint16Array | Uint32Array,
    readonly values: Float32Array,
    readonly width: number,
  ) {}

  static read(bytes: Uint8Array, refs: { indptr: ArrayRef; indices: ArrayRef; values: ArrayRef }, width: number) {
    const indptr = readUint(bytes, refs.indptr);
    if (!(indptr instanceof Uint32Array)) throw new Error("indptr must be uint32");
    return new Csr(indptr, readUint(bytes, refs.indices), readFloat(bytes, refs.values), width);
  }

  get nRows(): number {
    return this.indptr.length - 1;
  }

  /** Feature ids and values of one row, largest first, at most `k` of them. */
  row(t: number, k = Infinity): { feature: number; value: number }[] {
    const lo = this.indptr[t];
    const hi = Math.min(this.indptr[t + 1], lo + k);
    const out = [];
    for (let i = lo; i < hi; i++) out.push({ feature: this.indices[i], value: this.values[i] });
    return out;
  }

  /** Each present feature's max or sum over all rows. */
  scores(by: RankBy): Map<number, number> {
    const score = new Map<number, number>();
    for (let i = 0; i < this.indices.length; i++) {
      const f = this.indices[i];
      const v = this.values[i];
      const old = score.get(f);
      if (old === undefined) score.set(f, v);
      else score.set(f, by === "sum" ? old + v : Math.max(old, v));
    }
    return score;
  }

  /** The `n` features with the largest score (ties: smaller id first); "specific" ranks by max with the
   *  `dense` features after all others (payload.py's Payload.top_features). */
  topFeatures(n: number, by: RankBy, dense: ReadonlySet<number> = new Set()): number[] {
    const entries = [...this.scores(by)];
    const last = (f: number) => (by === "specific" && dense.has(f) ? 1 : 0);
    entries.sort((a, b) => last(a[0]) - last(b[0]) || b[1] - a[1] || a[0] - b[0]);
    return entries.slice(0, n).map(([f]) => f);
  }

  /** Dense `[nRows, features.length]` values of the given features (row-major). */
  columns(features: number[]): Float32Array {
    const col = new Map<number, number>();
    features.forEach((f, j) => col.set(f, j));
    const n = features.length;
    const out = new Float32Array(this.nRows * n);
    for (let t = 0; t < this.nRows; t++) {
      for (let i = this.indptr[t]; i < this.indptr[t + 1]; i++) {
        const j = col.get(this.indices[i]);
        if (j !== undefined) out[t * n + j] = this.values[i];
      }
    }
    return out;
  }

  /** One feature's value at every row (0 where it is absent). */
  column(feature: number): Float32Array {
    return this.columns([feature]);
  }
}

export const PAYLOAD_VERSION = 1;

/** A decoded payload (payload.py's Payload, in the browser): CSR blocks and corpus maxima, decoded once. */
export class Payload {
  private csrs = new Map<string, Csr>();
  private maxima = new Map<number, Map<number, number> | null>();
  readonly bytes: Uint8Array;

  constructor(
    readonly header: PayloadHeader,
    data: Bytes,
  ) {
    if (header.version !== PAYLOAD_VERSION) {
      throw new Error(`heatmap payload version ${header.version} is not ${PAYLOAD_VERSION}; rebuild the widget`);
    }
    this.bytes = asBytes(data);
    if (this.bytes.byteLength < header.bytes) {
      throw new Error(`payload is truncated: ${this.bytes.byteLength} of ${header.bytes} bytes`);
    }
  }

  /** The CSR block of `prompt` under SAE `sae`. */
  csr(prompt: number, sae: number): Csr {
    const key = `${prompt}/${sae}`;
    let csr = this.csrs.get(key);
    if (!csr) {
      const block = this.header.blocks.find((b) => b.prompt === prompt && b.sae === sae);
      if (!block) throw new Error(`no activations for prompt ${prompt}, SAE ${sae}`);
      csr = Csr.read(this.bytes, block, this.header.saes[sae].width);
      this.csrs.set(key, csr);
    }
    return csr;
  }

  /** Corpus maxima by feature id for SAE `sae` (only features present in the payload), or null. */
  featureMax(sae: number): Map<number, number> | null {
    if (!this.maxima.has(sae)) {
      const info = this.header.saes[sae]?.feature_max;
      let map: Map<number, number> | null = null;
      if (info) {
        const ids = readUint(this.bytes, info.ids);
        const values = readFloat(this.bytes, info.values);
        map = new Map();
        for (let i = 0; i < ids.length; i++) map.set(ids[i], values[i]);
      }
      this.maxima.set(sae, map);
    }
    return this.maxima.get(sae) ?? null;
  }
}
