"""Text contrast in JupyterLab's light and dark themes, measured from computed styles in Chromium.

Every visible text of every widget (heatmap shaded at full strength, feature pane with promoted/suppressed
tokens, steering columns with a divergence mark) must reach WCAG AA, 4.5:1 against the background actually
under it (element and ancestor backgrounds composited, opacity applied). Long logit tokens must not be clipped.
"""

from __future__ import annotations

import pytest

from tests.fixtures.tiny_scope import KERNEL_SETUP

pytestmark = pytest.mark.browser

SETUP = KERNEL_SETUP
HEATMAP = """
hm = scope.heatmap("Paris is the capital of France. The quick brown fox.", top_n=8, progress=False)
_f = hm.top_features(0)[0]
hm.select(prompt=0, token=int(hm.payload.block(0).dense()[:, _f].argmax()), feature=_f)
hm
"""
PANE = """
pane = scope.feature(hm.top_features(0)[0])
# A long token in the logit lists, as real vocabularies have.
pane.logits = {"top": [["▁" + "internationalisation" * 12, 2.5], *pane.logits["top"]], "bottom": pane.logits["bottom"]}
pane
"""
STEER = 'w = scope.steer("The quick brown fox", {3: 40.0}, max_new_tokens=6, stop_at_eos=False)\nw'

# Returns, for every visible text-bearing element in a widget, its text, colours as RGBA and the ratio.
_MEASURE = r"""(index) => {
  const canvas = document.createElement('canvas'); canvas.width = canvas.height = 1;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  const rgba = (css) => {
    ctx.clearRect(0, 0, 1, 1); ctx.fillStyle = '#000'; ctx.fillStyle = css; ctx.fillRect(0, 0, 1, 1);
    const [r, g, b, a] = ctx.getImageData(0, 0, 1, 1).data; return [r, g, b, a / 255];
  };
  const over = (top, bottom) => {  // top composited over an opaque bottom
    const a = top[3]; return [0, 1, 2].map((i) => top[i] * a + bottom[i] * (1 - a)).concat([1]);
  };
  const background = (node) => {
    const layers = [];
    for (let n = node; n && n.nodeType === 1; n = n.parentElement) {
      const c = rgba(getComputedStyle(n).backgroundColor);
      if (c[3] > 0) layers.push(c);
      if (c[3] === 1) break;
    }
    let bg = [255, 255, 255, 1];
    if (layers.length && layers[layers.length - 1][3] === 1) bg = layers.pop();
    for (const layer of layers.reverse()) bg = over(layer, bg);
    return bg;
  };
  const opacity = (node) => {
    let o = 1; for (let n = node; n && n.nodeType === 1; n = n.parentElement) o *= Number(getComputedStyle(n).opacity);
    return o;
  };
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const out = [];
  for (const root of [document.querySelectorAll('.gs-root')[index]]) {
    for (const node of root.querySelectorAll('*')) {
      if (['STYLE', 'SCRIPT', 'OPTION', 'TITLE'].includes(node.tagName)) continue;
      if (node.closest(':disabled, [hidden], svg title')) continue;  // inactive controls are exempt in WCAG
      const own = Array.from(node.childNodes).filter((c) => c.nodeType === 3);
      const text = own.map((c) => c.textContent).join('').trim();
      if (!text) continue;
      const rect = node.getBoundingClientRect();
      if (rect.width === 0 || rect.height === 0) continue;
      const style = getComputedStyle(node);
      if (style.visibility === 'hidden') continue;
      const bg = background(node);
      let fg = rgba(node instanceof SVGElement ? style.fill : style.color);
      fg = over([fg[0], fg[1], fg[2], fg[3] * opacity(node)], bg);
      const [l1, l2] = [lum(fg), lum(bg)].sort((a, b) => b - a);
      out.push({ text: text.slice(0, 40), cls: String(node.className.baseVal ?? node.className), fg, bg,
                 ratio: (l1 + 0.05) / (l2 + 0.05) });
    }
  }
  return out;
}"""

_CLIPPED = r"""() => Array.from(document.querySelectorAll('.gs-logit-list .gs-token')).filter((t) => {
  const r = t.getBoundingClientRect();
  const box = t.closest('.gs-root').getBoundingClientRect();
  return r.right > box.right + 1 || r.left < box.left - 1 || t.scrollWidth > t.clientWidth + 1;
}).map((t) => t.textContent)"""


def _failures(page) -> list[str]:
    """Scrolls each widget into view (JupyterLab skips rendering cells out of view) and measures its texts."""
    roots = page.locator(".gs-root")
    failures = []
    for i in range(roots.count()):
        roots.nth(i).scroll_into_view_if_needed()
        page.wait_for_timeout(300)
        rows = page.evaluate(_MEASURE, i)
        assert len(rows) >= 10, f"too few texts measured in widget {i} ({len(rows)}): did it render?"
        failures += [
            f"{r['ratio']:.2f}:1 {r['cls']!r} {r['text']!r} fg={r['fg']} bg={r['bg']}" for r in rows if r["ratio"] < 4.5
        ]
    return failures


def test_text_contrast_in_light_and_dark_themes_and_no_clipped_tokens(lab_server, page):
    from playwright.sync_api import expect

    lab_server.open_and_run(page, "contrast.ipynb", [SETUP, HEATMAP, PANE, STEER])
    expect(page.locator(".gs-hm-cell").first).to_be_visible(timeout=60_000)
    expect(page.locator(".gs-pane .gs-pos .gs-token").first).to_be_visible(timeout=60_000)
    expect(page.locator(".gs-steered .gs-token")).to_have_count(6, timeout=60_000)
    expect(page.locator(".gs-steer-value").first).to_contain_text("raw", timeout=60_000)
    # The selected feature shades the heatmap's text, the strongest token at full heat.
    expect(page.locator(".gs-hm-text .gs-token[style*='color-mix']").first).to_be_visible(timeout=30_000)

    light = _failures(page)
    page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})")
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'", timeout=60_000)
    page.wait_for_timeout(1000)  # the theme's stylesheet applies after the attribute
    lab_server.screenshot(page, "widgets_dark_theme")
    dark = _failures(page)
    assert not light and not dark, "below 4.5:1:\nlight:\n" + "\n".join(light) + "\ndark:\n" + "\n".join(dark)
    page.locator(".gs-pane").first.scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    assert page.evaluate(_CLIPPED) == []
