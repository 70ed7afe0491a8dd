// The circuit view's transform from world coordinates (the layout of circuit_graph.ts) to the screen:
// screen = world * k + t, per axis, and whether the user has panned or zoomed since the last fit.
//
//   fit(w, worldW)    the whole graph across a view `w` px wide (a prompt too long for its columns squeezed)
//   home(w, worldW)   full size; when the graph is wider than the view, its right end (where the logits are)
//   zoomAt(px, py, deltaY)  a wheel step around the pointer, the zoom kept within [0.05, 40]
//   panFrom(start, dx, dy)  a drag from the transform at its start

/** The translation part of a transform (a drag starts from one). */
export interface Offset {
  tx: number;
  ty: number;
}

export class Viewport {
  kx = 1;
  ky = 1;
  tx = 0;
  ty = 0;
  /** True once the user has panned or zoomed since the last fit / home. */
  moved = false;

  fit(w: number, worldW: number): void {
    this.kx = Math.min(1, w / worldW);
    this.ky = 1;
    this.tx = 0;
    this.ty = 0;
    this.moved = false;
  }

  home(w: number, worldW: number): void {
    this.kx = 1;
    this.ky = 1;
    this.tx = Math.min(0, w - worldW);
    this.ty = 0;
    this.moved = false;
  }

  zoomAt(px: number, py: number, deltaY: number): void {
    const f = Math.min(
      40 / Math.max(this.kx, this.ky),
      Math.max(0.05 / Math.min(this.kx, this.ky), Math.exp(-deltaY * 0.0015)),
    );
    this.tx = px - (px - this.tx) * f;
    this.ty = py - (py - this.ty) * f;
    this.kx *= f;
    this.ky *= f;
    this.moved = true;
  }

  panFrom(start: Offset, dx: number, dy: number): void {
    this.tx = start.tx + dx;
    this.ty = start.ty + dy;
    this.moved = true;
  }

  sx(x: number): number {
    return x * this.kx + this.tx;
  }

  sy(y: number): number {
    return y * this.ky + this.ty;
  }
}
