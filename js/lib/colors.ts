// Colour scale for activations: the theme's heat colour mixed with transparency, so the cell keeps
// the host's background (light or dark) and the text colour stays legible on top of it.

/** Normalised activation -> a CSS background. `t` is clamped to [0, 1]; 0 gives no colour. */
export function heatBackground(t: number): string {
  if (!(t > 0)) return "";
  const pct = Math.round(Math.min(1, t) * 85) + 10; // a faint but visible floor for any non-zero value
  return `color-mix(in srgb, var(--gs-heat) ${pct}%, transparent)`;
}

/** `value / max`, 0 when max is not positive. */
export function normalise(value: number, max: number): number {
  return max > 0 ? Math.min(1, value / max) : 0;
}
