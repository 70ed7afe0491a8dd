// How every widget prints a number; the one rule shared with format_value in
// gemscope_widgets/widgets/payload.py (tests/ check both sides on the same cases):
//
//   formatValue(v)     4 significant digits (halves rounded up, as toPrecision does on the exact value),
//                      plain decimal notation, no trailing zeros: 1235, 0.5, 12350, 0.0001235
//   formatPercent(p)   a share in [0, 1] as a percentage with the same rule: 0.0123 -> "1.23%"

function plainDecimal(text: string): string {
  const m = /^(-?)(\d)(?:\.(\d+))?e([+-]\d+)$/.exec(text);
  if (!m) return text;
  const [, sign, lead, frac = "", expText] = m;
  const digits = lead + frac;
  const point = 1 + Number(expText); // position of the decimal point within `digits`
  if (point <= 0) return `${sign}0.${"0".repeat(-point)}${digits}`;
  if (point >= digits.length) return sign + digits + "0".repeat(point - digits.length);
  return `${sign}${digits.slice(0, point)}.${digits.slice(point)}`;
}

/** A value as text: 4 significant digits, plain decimal, no trailing zeros. */
export function formatValue(value: number): string {
  if (value === 0) return "0";
  if (!Number.isFinite(value)) return String(value);
  let text = plainDecimal(value.toPrecision(4));
  if (text.includes(".")) text = text.replace(/0+$/, "").replace(/\.$/, "");
  return text;
}

/** A share (0.0123) as a percentage ("1.23%"), digits by formatValue. */
export function formatPercent(share: number): string {
  return `${formatValue(share * 100)}%`;
}
