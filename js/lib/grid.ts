// A vertically virtualised list: only the rows in (or near) the viewport exist in the DOM, so a
// 2,000-token prompt scrolls as smoothly as a 20-token one.
//
//   new VirtualRows({rowHeight, overscan, renderRow})   .scroller (append it), .header (sticky), reset(n),
//                                                       refresh(), reveal(i), rowElement(i), destroy()
import { el } from "./dom";

export interface VirtualRowsOptions {
  rowHeight: number;
  /** Rows drawn above and below the viewport so fast scrolling shows no gaps. */
  overscan?: number;
  /** Builds row `i`; it is positioned by the list. */
  renderRow: (i: number) => HTMLElement;
}

export class VirtualRows {
  readonly scroller: HTMLDivElement;
  readonly header: HTMLDivElement;
  private readonly body: HTMLDivElement;
  private count = 0;
  private drawn = new Map<number, HTMLElement>();
  private frame = 0;

  constructor(private readonly opts: VirtualRowsOptions) {
    this.scroller = el("div", "gs-vr-scroller");
    this.header = el("div", "gs-vr-header");
    this.body = el("div", "gs-vr-body");
    this.scroller.append(this.header, this.body);
    this.scroller.addEventListener("scroll", this.onScroll, { passive: true });
  }

  private onScroll = () => {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.update();
    });
  };

  /** Sets the number of rows and redraws every visible row. */
  reset(count: number): void {
    this.count = count;
    this.body.style.height = `${count * this.opts.rowHeight}px`;
    this.body.replaceChildren();
    this.drawn.clear();
    this.update();
  }

  /** Redraws the visible rows (after a change of what they show). */
  refresh(): void {
    this.reset(this.count);
  }

  private visibleRange(): [number, number] {
    const { rowHeight, overscan = 8 } = this.opts;
    const top = Math.max(0, this.scroller.scrollTop - this.header.offsetHeight);
    // Before the element is laid out (hidden tab, static export) draw a screenful anyway.
    const height = this.scroller.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / rowHeight) - overscan);
    const last = Math.min(this.count, Math.ceil((top + height) / rowHeight) + overscan);
    return [first, last];
  }

  private update(): void {
    const [first, last] = this.visibleRange();
    for (const [i, el] of this.drawn) {
      if (i < first || i >= last) {
        el.remove();
        this.drawn.delete(i);
      }
    }
    for (let i = first; i < last; i++) {
      if (this.drawn.has(i)) continue;
      const el = this.opts.renderRow(i);
      el.style.position = "absolute";
      el.style.top = `${i * this.opts.rowHeight}px`;
      el.style.height = `${this.opts.rowHeight}px`;
      this.body.append(el);
      this.drawn.set(i, el);
    }
  }

  /** Scrolls so that row `i` is in view. */
  reveal(i: number): void {
    const { rowHeight } = this.opts;
    const top = i * rowHeight + this.header.offsetHeight;
    const view = this.scroller.clientHeight;
    if (top < this.scroller.scrollTop + this.header.offsetHeight || top + rowHeight > this.scroller.scrollTop + view) {
      this.scroller.scrollTop = Math.max(0, top - view / 2);
    }
  }

  /** The drawn element of row `i`, if it is in the DOM. */
  rowElement(i: number): HTMLElement | undefined {
    return this.drawn.get(i);
  }

  destroy(): void {
    this.scroller.removeEventListener("scroll", this.onScroll);
    if (this.frame) cancelAnimationFrame(this.frame);
  }
}
