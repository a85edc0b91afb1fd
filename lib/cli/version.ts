import type { Command } from 'commander';
import { toolVersion } from '../support/package-info.ts';

/**
 * `--version` on the program and on every command under it (`mlm-filter filter --version` too, before any required
 * option is checked): prints the package version and exits 0. Added after the commands are built, so none is missed.
 */
export function addVersionOptions(program: Command, version = toolVersion()): void {
  program.version(version, '-V, --version', 'print the version and exit');
  const visit = (command: Command) => {
    for (const sub of command.commands) {
      sub.version(version, '--version', 'print the version and exit');
      visit(sub);
    }
  };
  visit(program);
}
