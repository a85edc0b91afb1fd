#!/usr/bin/env node
// Runs the TypeScript sources through tsx's loader, so the CLI works straight from a clone (no build step).
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../lib/cli/main.ts');
process.exitCode = await main(process.argv.slice(2));
