// A control whose value the kernel echoes back (a slider whose trait the kernel sets after checking it).
//
// While the user drags, the kernel answers older values than the thumb shows; written to the control they would
// move its label back. `EchoGuard` remembers the last value sent and tells which kernel values to show:
//
//   guard.grab() / guard.release()   the user holds the control: nothing from the kernel is shown meanwhile
//   guard.send(v, current)            true when v should be sent (never a value the kernel already holds: it
//                                     would not echo it), and then remembers it
//   guard.accept(v)                   whether the kernel's value v may be shown now: the echo of the last value
//                                     sent, or anything once nothing is awaited or `waitMs` have passed
//   guard.reset()                     forget what was sent (the kernel refused it and keeps its value)

export class EchoGuard {
  private awaiting: number | null = null;
  private sentAt = 0;
  private held = false;

  constructor(
    private readonly waitMs = 3000,
    private readonly now: () => number = () => Date.now(),
  ) {}

  grab(): void {
    this.held = true;
  }

  release(): void {
    this.held = false;
  }

  send(value: number, current: number): boolean {
    if (value === (this.awaiting ?? current)) return false;
    this.awaiting = value;
    this.sentAt = this.now();
    return true;
  }

  accept(value: number): boolean {
    if (this.held) return false;
    if (this.awaiting !== null && this.awaiting !== value && this.now() - this.sentAt < this.waitMs) return false;
    this.awaiting = null;
    return true;
  }

  reset(): void {
    this.awaiting = null;
    this.held = false;
  }
}
