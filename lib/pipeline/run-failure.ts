/**
 * The run's first fatal error. Every part that waits (the source read, room for more records, the drain) watches
 * `signal`, so a fatal error stops the run at once whatever the traffic, instead of when the next batch arrives.
 */
export class RunFailure {
  private readonly controller = new AbortController();
  private first: { error: unknown } | undefined;

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  get failed(): boolean {
    return this.first !== undefined;
  }

  /** Records `error` unless an earlier one was recorded; the first error is the run's error. */
  fail(error: unknown): void {
    if (this.first) return;
    this.first = { error };
    this.controller.abort(error);
  }

  throwIfFailed(): void {
    if (this.first) throw this.first.error;
  }
}
