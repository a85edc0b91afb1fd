/** An id memory of bounded size (insertion-ordered Set, oldest evicted): the run's duplicate detection. */
export class RecentIds {
  private readonly ids = new Set<string>();
  constructor(private readonly max: number) {}

  /** True if `id` was seen before; remembers it either way. */
  seen(id: string): boolean {
    if (this.ids.has(id)) return true;
    this.ids.add(id);
    if (this.ids.size > this.max) this.ids.delete(this.ids.values().next().value!);
    return false;
  }

  /** A dropped batch will be redelivered: its ids must not count as seen then. */
  forget(id: string): void {
    this.ids.delete(id);
  }
}
