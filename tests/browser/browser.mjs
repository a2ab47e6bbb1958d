// Headless Chromium for the console's browser tests: Debian's `chromium`
// (installed by scripts/setup) driven by playwright-core, in a fresh profile
// directory, with everything that would reach the network switched off.
import { chromium } from 'playwright-core';
import { mkdtempSync, mkdirSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

const ROOT = path.resolve(import.meta.dirname, '../..');
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
/** Where screenshots go: target/browser-screenshots, or SCREENSHOTS_DIR (e.g. docs/screenshots). */
export const SCREENSHOTS = path.resolve(ROOT, process.env.SCREENSHOTS_DIR || 'target/browser-screenshots');

export async function launchBrowser() {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: run scripts/setup (apt package chromium)`);
  const profile = mkdtempSync(path.join(tmpdir(), 'edgeway-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    viewport: { width: 1280, height: 900 },
    locale: 'en-US',
    timezoneId: 'UTC',
  });
  mkdirSync(SCREENSHOTS, { recursive: true });
  const close = context.close.bind(context);
  context.close = async () => {
    await close();
    rmSync(profile, { recursive: true, force: true });
  };
  return context;
}

/** Saves a full-page screenshot as SCREENSHOTS/NAME.png. */
export async function screenshot(page, name) {
  await page.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`), fullPage: true });
}
