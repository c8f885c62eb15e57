// Opens the server's /watch page in headless Chromium, logs in as a remote device, watches
// streams, and prints {"frames":[per window], "states":[...], "errors":[...]} as JSON.
// Usage: node watch.mjs BASE_URL DEVICE PASSWORD GWID STREAMS SECONDS [SCREENSHOT.png]
import { chromium } from 'playwright-core';

const [base, device, password, gwid, streams, seconds, shot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync',
         '--allow-loopback-in-peer-connection', '--autoplay-policy=no-user-gesture-required'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
  await page.goto(`${base}/watch`);
  await page.fill('input[name=device]', device);
  await page.fill('input[name=password]', password);
  await page.fill('input[name=gwid]', gwid);
  await page.fill('input[name=streams]', streams);
  await page.click('button');
  await page.waitForTimeout(Number(seconds) * 1000);
  const result = await page.evaluate(() => window.fieldlink);
  if (shot) await page.screenshot({ path: shot });
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
