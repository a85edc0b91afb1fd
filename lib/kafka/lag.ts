import type { Admin } from 'kafkajs';

/**
 * Records of one partition a consumer group has still to consume: the high watermark minus where the group resumes.
 * A group resumes at its committed offset; with none (kafkajs offsets are -1, or -2 once it reset to earliest) or a
 * commit below the low watermark (retention deleted the records it pointed at), it resumes at the low watermark --
 * deleted records can no longer be consumed, so they are no backlog. Never negative.
 */
export function partitionLag(high: bigint, low: bigint, committed: bigint | null): bigint {
  const from = committed === null || committed < low ? low : committed;
  return high > from ? high - from : 0n;
}

/** One partition's offsets and lag. Offsets are kafkajs's int64 strings. */
export interface PartitionLag {
  readonly partition: number;
  readonly low: string;
  readonly high: string;
  /** The group's committed offset, or null where it has none (never committed, offsets expired, reset). */
  readonly committed: string | null;
  readonly lag: bigint;
}

/** The admin calls a lag measurement makes (a kafkajs `Admin` has them). */
export type OffsetsAdmin = Pick<Admin, 'fetchTopicOffsets' | 'fetchOffsets'>;

/** Per partition of `topic`, in partition order: its watermarks, `groupId`'s commit, and the lag (partitionLag). */
export async function groupLag(admin: OffsetsAdmin, topic: string, groupId: string): Promise<PartitionLag[]> {
  const [ends, groups] = await Promise.all([
    admin.fetchTopicOffsets(topic),
    admin.fetchOffsets({ groupId, topics: [topic] }),
  ]);
  const commits = new Map(
    (groups.find((g) => g.topic === topic)?.partitions ?? []).map((p) => [p.partition, BigInt(p.offset)]),
  );
  return ends
    .map((p): PartitionLag => {
      const commit = commits.get(p.partition);
      const committed = commit !== undefined && commit >= 0n ? commit : null;
      return {
        partition: p.partition,
        low: p.low,
        high: p.high,
        committed: committed?.toString() ?? null,
        lag: partitionLag(BigInt(p.high), BigInt(p.low), committed),
      };
    })
    .sort((a, b) => a.partition - b.partition);
}
