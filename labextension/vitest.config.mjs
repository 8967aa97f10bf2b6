import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    environment: 'happy-dom',
    include: ['test/**/*.test.ts'],
    // Two shared CPU cores: one worker is enough for these small suites.
    pool: 'threads',
    maxWorkers: 1
  }
});
