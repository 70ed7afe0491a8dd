// Colour, one scale per meaning. Every colour is a CSS variable defined in lib/theme.css (with light and
// dark values), so the host theme decides and the text on top stays legible (WCAG AA, 4.5:1):
//
//   activation strength   heatBackground(t): var(--gs-heat) mixed with transparency; used by every
//                         widget that shades tokens or cells by a feature's activation
//   sign of an effect     var(--gs-pos) / var(--gs-neg) text colours (promoted / suppressed tokens)
//   change / divergence   var(--gs-diverge) (first token where steered and baseline text differ)
//   selection             var(--gs-accent) / var(--gs-accent-soft)
//
// normalise(value, max) turns an activation into the `t` of heatBackground.

/** The lowest and highest share of the heat colour in a shaded background, in percent. */
export const HEAT_FLOOR = 12;
export const HEAT_CEIL = 95;

/** Share (percent) of the heat colour for a normalised activation `t`; 0 for t <= 0 or NaN. */
export function heatPercent(t: number): number {
  if (!(t > 0)) return 0;
  return Math.round(Math.min(1, t) * (HEAT_CEIL - HEAT_FLOOR)) + HEAT_FLOOR;
}

/** Normalised activation -> a CSS background. `t` is clamped to [0, 1]; 0 gives no colour (""). */
export function heatBackground(t: number): string {
  const pct = heatPercent(t);
  return pct ? `color-mix(in srgb, var(--gs-heat) ${pct}%, transparent)` : "";
}

/** A signed projection under a token: an inset underline, var(--gs-pos) or var(--gs-neg), as strong as
 *  |value| / maxAbs (the projection tracks of the heatmap and the conversation view). */
export function trackUnderline(value: number, maxAbs: number): string {
  const pct = Math.round(normalise(Math.abs(value), maxAbs) * 100);
  const colour = value >= 0 ? "var(--gs-pos)" : "var(--gs-neg)";
  return `inset 0 -3px 0 0 color-mix(in srgb, ${colour} ${pct}%, transparent)`;
}

/** `value / max` clamped to [0, 1]; 0 when max is not positive. */
export function normalise(value: number, max: number): number {
  return max > 0 ? Math.max(0, Math.min(1, value / max)) : 0;
}
