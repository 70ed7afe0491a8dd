// Decoding the binary CSR payload written by gemscope_widgets/widgets/payload.py.

/** Where one array lies in the payload blob. */
export interface ArrayRef {
  offset: number;
  length: number;
  dtype: "uint16" | "uint32" | "float16" | "float32";
}

export type Bytes = DataView | ArrayBuffer | Uint8Array;

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

export type RankBy = "max" | "sum";

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
      else score.set(f, by === "max" ? Math.max(old, v) : old + v);
    }
    return score;
  }

  /** The `n` features with the largest score (ties: smaller id first). */
  topFeatures(n: number, by: RankBy): number[] {
    const entries = [...this.scores(by)];
    entries.sort((a, b) => b[1] - a[1] || a[0] - b[0]);
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
