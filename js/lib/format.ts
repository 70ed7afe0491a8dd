// How every widget prints a number; the one rule shared with format_value in
// gemscope_widgets/widgets/payload.py (tests/ check both sides on the same cases):
//
//   formatValue(v)     4 significant digits (halves rounded up, as toPrecision does on the exact value),
//                      plain decimal notation, no trailing zeros: 1235, 0.5, 12350, 0.0001235
//   formatPercent(p)   a share in [0, 1] as a percentage with the same rule: 0.0123 -> "1.23%"
//
// and how every widget names a token outside running text (labels, tooltips, tables, prose), the one rule
// shared with visible_text in gemscope_widgets/widgets/token_text.py (the saved-notebook HTML and payload names):
//
//   visibleText(tok)   spaces as "␣", newline "↵", tab "→", other controls as their control picture,
//                      the empty token "∅": " of" -> "␣of" (quoted in prose: “␣of”)

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

const NEWLINE_MARK = "↵";
const TAB_MARK = "→";
const EMPTY_MARK = "∅";

// C0 controls and DEL have visible "control picture" glyphs at U+2400 + code (U+2421 for DEL).
function controlPicture(ch: string): string {
  const code = ch.charCodeAt(0);
  return code === 0x7f ? "\u2421" : String.fromCharCode(0x2400 + code);
}

function isControl(ch: string): boolean {
  const code = ch.charCodeAt(0);
  return (code < 0x20 && ch !== "\n" && ch !== "\t") || code === 0x7f;
}

/** The token with every whitespace and control character made visible, for labels, tooltips and tables. */
export function visibleText(tok: string): string {
  if (tok.length === 0) return EMPTY_MARK;
  let out = "";
  for (const ch of tok) {
    if (ch === " ") out += "␣";
    else if (ch === "\n") out += NEWLINE_MARK;
    else if (ch === "\t") out += TAB_MARK;
    else if (isControl(ch)) out += controlPicture(ch);
    else out += ch;
  }
  return out;
}

/** The marks visibleText uses, for renderToken (./tokens), which keeps spaces and breaks lines as well. */
export const CONTROL_MARKS = { newline: NEWLINE_MARK, tab: TAB_MARK, empty: EMPTY_MARK, controlPicture, isControl };
