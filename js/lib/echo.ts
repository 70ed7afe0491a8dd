// A control whose value the kernel echoes back (a slider whose trait the kernel sets after checking it).
//
// While the user drags, the kernel answers older values than the thumb shows; written to the control they would
// move its label back. Each value sent carries a request id (`requestId()`: increasing within a page) and the
// kernel reports the id of the last request it handled, applied or refused (`applied_request`). `EchoGuard`
// remembers the last request it sent and tells when the kernel's values may be shown again:
//
//   guard.grab() / guard.release()    the user holds the control: nothing from the kernel is shown meanwhile
//   guard.send(v, current, id)        true when v should be sent (never a value the kernel already holds),
//                                     and then remembers request `id`
//   guard.accept(applied)             whether the kernel's values may be shown now: not held, and nothing
//                                     awaited or the kernel has handled the awaited request (applied >= id)
//   guard.reset()                     forget what was sent (the kernel is gone: show what the texts were made with)
//
// No timer: a slow kernel (a large model, a loaded machine) answers late but in order, so an older value is
// never shown after a newer one was sent.

let lastRequest = 0;

/** A request id larger than every earlier one on this page (so several views of one widget stay ordered). */
export function requestId(now: () => number = Date.now): number {
  lastRequest = Math.max(lastRequest + 1, now() * 1000);
  return lastRequest;
}

export class EchoGuard {
  private awaitingValue: number | null = null;
  private awaitingId: number | null = null;
  private held = false;

  grab(): void {
    this.held = true;
  }

  release(): void {
    this.held = false;
  }

  send(value: number, current: number, id: number): boolean {
    if (value === (this.awaitingValue ?? current)) return false;
    this.awaitingValue = value;
    this.awaitingId = id;
    return true;
  }

  accept(applied: number): boolean {
    if (this.held) return false;
    if (this.awaitingId !== null && applied < this.awaitingId) return false;
    this.awaitingValue = null;
    this.awaitingId = null;
    return true;
  }

  reset(): void {
    this.awaitingValue = null;
    this.awaitingId = null;
    this.held = false;
  }
}
