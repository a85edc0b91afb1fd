/** A counting semaphore with weighted acquire: the bound behind every queue of the pipeline. */
export class Semaphore {
  private waiters: { n: number; resolve: () => void; reject: (e: unknown) => void }[] = [];
  private used = 0;

  constructor(readonly capacity: number) {
    if (!(capacity >= 1)) throw new RangeError(`semaphore capacity must be >= 1, got ${capacity}`);
  }

  get inUse(): number {
    return this.used;
  }

  get waiting(): number {
    return this.waiters.length;
  }

  /** Takes `n` units (capped at capacity) if they are free now and nobody waits; false otherwise. */
  tryAcquire(n = 1): boolean {
    const want = Math.min(n, this.capacity);
    if (this.waiters.length > 0 || this.used + want > this.capacity) return false;
    this.used += want;
    return true;
  }

  /** Takes `n` units (capped at capacity, so one oversized request still runs alone). */
  acquire(n = 1, signal?: AbortSignal): Promise<void> {
    const want = Math.min(n, this.capacity);
    signal?.throwIfAborted();
    if (this.waiters.length === 0 && this.used + want <= this.capacity) {
      this.used += want;
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) {
          this.waiters.splice(i, 1);
          reject(signal!.reason);
          this.pump();
        }
      };
      // The listener goes as soon as the units are granted: long runs must not pile listeners on a shared signal.
      const waiter = {
        n: want,
        resolve: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        },
        reject,
      };
      this.waiters.push(waiter);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  release(n = 1): void {
    this.used -= Math.min(n, this.capacity);
    this.pump();
  }

  private pump(): void {
    while (this.waiters.length > 0 && this.used + this.waiters[0]!.n <= this.capacity) {
      const w = this.waiters.shift()!;
      this.used += w.n;
      w.resolve();
    }
  }
}
