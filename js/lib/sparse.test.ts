import { describe, expect, it } from "vitest";
import type { ArrayRef, PayloadHeader } from "./protocol";
import { Csr, Payload, asBytes, float32Of, halfToFloat, readFloat, readUint } from "./sparse";

// Lays arrays out as payload.py's _BlobWriter does: little-endian, each start a multiple of 4 bytes.
function blob(arrays: (Uint32Array | Uint16Array | Float32Array)[]): { bytes: Uint8Array; refs: ArrayRef[] } {
  const refs: ArrayRef[] = [];
  let size = 0;
  for (const a of arrays) {
    const dtype = a instanceof Uint32Array ? "uint32" : a instanceof Float32Array ? "float32" : "uint16";
    refs.push({ offset: size, length: a.length, dtype });
    size += Math.ceil(a.byteLength / 4) * 4;
  }
  const bytes = new Uint8Array(size);
  arrays.forEach((a, i) => bytes.set(new Uint8Array(a.buffer, a.byteOffset, a.byteLength), refs[i].offset));
  return { bytes, refs };
}

describe("halfToFloat", () => {
  it("widens float16 bits exactly", () => {
    const bits = new Uint16Array([0x3c00, 0xc000, 0x7bff, 0x0001, 0x3555, 0x7c00, 0xfc00, 0x0000]);
    const out = halfToFloat(bits);
    expect(Array.from(out.slice(0, 5))).toEqual([1, -2, 65504, 2 ** -24, Math.fround(0.333251953125)]);
    expect(out[5]).toBe(Infinity);
    expect(out[6]).toBe(-Infinity);
    expect(out[7]).toBe(0);
    expect(Number.isNaN(halfToFloat(new Uint16Array([0x7e00]))[0])).toBe(true);
  });
});

describe("float32Of", () => {
  it("reads aligned and misaligned float32 bytes, and empty input", () => {
    const values = new Float32Array([1.5, -2, 3.25]);
    expect(Array.from(float32Of(new DataView(values.buffer)))).toEqual([1.5, -2, 3.25]);
    const shifted = new Uint8Array(13);
    shifted.set(new Uint8Array(values.buffer), 1);
    expect(Array.from(float32Of(new DataView(shifted.buffer, 1, 12)))).toEqual([1.5, -2, 3.25]);
    expect(float32Of(undefined)).toHaveLength(0);
    expect(() => float32Of(new Uint8Array(6))).toThrow(/whole number/);
  });
});

describe("Csr and Payload", () => {
  // Two tokens: token 0 has features 5 (2.0) and 1 (1.0); token 1 has feature 1 (0.5).
  const indptr = new Uint32Array([0, 2, 3]);
  const indices = new Uint16Array([5, 1, 1]);
  const values = new Uint16Array([0x4000, 0x3c00, 0x3800]); // float16 2, 1, 0.5
  const maxIds = new Uint32Array([1, 5]);
  const maxValues = new Float32Array([4, 8]);
  const { bytes, refs } = blob([indptr, indices, values, maxIds, maxValues]);
  refs[2] = { ...refs[2], dtype: "float16" };
  const header: PayloadHeader = {
    version: 1,
    top_k: null,
    saes: [{ name: "s", width: 8, id_dtype: "uint16", feature_max: { ids: refs[3], values: refs[4] } }],
    prompts: [{ tokens: ["a", "b"], special: [false, false], template: [false, false], chat: false }],
    blocks: [{ prompt: 0, sae: 0, n_tokens: 2, nnz: 3, clamped: 0, indptr: refs[0], indices: refs[1], values: refs[2] }],
    bytes: bytes.byteLength,
  };

  it("decodes rows, scores, top features and dense columns", () => {
    const payload = new Payload(header, new DataView(bytes.buffer));
    const csr = payload.csr(0, 0);
    expect(csr.nRows).toBe(2);
    expect(csr.row(0)).toEqual([{ feature: 5, value: 2 }, { feature: 1, value: 1 }]);
    expect(csr.row(0, 1)).toEqual([{ feature: 5, value: 2 }]);
    expect(csr.topFeatures(5, "max")).toEqual([5, 1]);
    expect(csr.scores("sum").get(1)).toBe(1.5);
    expect(Array.from(csr.columns([1, 5]))).toEqual([1, 2, 0.5, 0]);
    expect(Array.from(csr.column(7))).toEqual([0, 0]);
    expect(payload.csr(0, 0)).toBe(csr); // decoded once
  });

  it("ranks ties by the smaller feature id", () => {
    const csr = new Csr(new Uint32Array([0, 2]), new Uint16Array([9, 3]), new Float32Array([1, 1]), 10);
    expect(csr.topFeatures(2, "max")).toEqual([3, 9]);
  });

  it("ranks dense features last under 'specific', and only there", () => {
    const csr = new Csr(new Uint32Array([0, 3]), new Uint16Array([1, 2, 3]), new Float32Array([9, 5, 1]), 4);
    const dense = new Set([1]);
    expect(csr.topFeatures(3, "specific", dense)).toEqual([2, 3, 1]);
    expect(csr.topFeatures(2, "specific", dense)).toEqual([2, 3]);
    expect(csr.topFeatures(3, "max", dense)).toEqual([1, 2, 3]);
    expect(csr.topFeatures(3, "specific")).toEqual([1, 2, 3]); // no densities: plain max
  });

  it("reads corpus maxima", () => {
    const payload = new Payload(header, bytes);
    expect(payload.featureMax(0)).toEqual(new Map([[1, 4], [5, 8]]));
  });

  it("refuses a truncated blob, a wrong version and a missing block", () => {
    expect(() => new Payload(header, bytes.slice(0, 8))).toThrow(/truncated/);
    expect(() => new Payload({ ...header, version: 2 }, bytes)).toThrow(/version/);
    expect(() => new Payload(header, bytes).csr(1, 0)).toThrow(/no activations/);
    expect(() => readUint(bytes, { offset: 0, length: 1000, dtype: "uint32" })).toThrow(/truncated/);
    expect(() => readFloat(bytes, refs[0])).toThrow(/float/);
  });

  it("copies arrays whose start is not aligned inside the host buffer", () => {
    const shifted = new Uint8Array(bytes.byteLength + 2);
    shifted.set(bytes, 2);
    const view = asBytes(new DataView(shifted.buffer, 2, bytes.byteLength));
    expect(Array.from(readUint(view, refs[0]))).toEqual([0, 2, 3]);
  });
});
