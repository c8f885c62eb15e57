// Drives the web console and admin page in headless Chromium (Debian's) for
// crates/fieldlink/tests/console.rs, which runs the real server and field device and
// checks what this prints: one JSON object on stdout.
//
// Usage: node console.mjs SCENARIO BASE_URL 'JSON args'
//   grid      {device, password, gwid, fps, screenshot}
//   handover  {a: [device, password], b: [...], gwid}   (waits for a report, see below)
//   admin     {token, project, device, screenshot}
//   logins    {tries: [[device, password], ...]}
//   failures  {device, password, online, offline, expired_code, code}
//   gb        {token, device, password, gb_id, gwid, screenshot}
//   diagnose  {device, password, gwid, screenshot}
//   https     {device, password, gwid}  (the console over HTTPS/WSS: watches stream 0)
//   voice     {device, password, gwid, fake_audio, talk_ms}  (hears the field device, then
//             talks with the ` key; a second page without microphone permission is refused)
import { chromium } from 'playwright-core';

const [scenario, base, argJson] = process.argv.slice(2);
const args = JSON.parse(argJson || '{}');
const T = 15000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync',
         '--allow-loopback-in-peer-connection', '--autoplay-policy=no-user-gesture-required',
         // Present every decoded frame as it comes (no 60 Hz compositor clock that drops
         // one of two frames landing in the same tick): the frame callbacks then show the
         // stream itself, not the headless renderer's timing.
         '--disable-gpu-vsync', '--disable-frame-rate-limit',
         // The voice scenario's microphone: a WAV file instead of a device (permission
         // still has to be granted per context).
         ...(args.fake_audio ? ['--use-fake-device-for-media-stream', `--use-file-for-fake-audio-capture=${args.fake_audio}`] : [])],
});
const out = { pageErrors: [] };

async function newPage(width = 1400, height = 860) {
  const ctx = await browser.newContext({ viewport: { width, height } });
  const page = await ctx.newPage();
  page.on('pageerror', (e) => out.pageErrors.push(e.message));
  return page;
}

async function login(page, device, password) {
  await page.goto(`${base}/`);
  await page.fill('#login input[name=device]', device);
  await page.fill('#login input[name=password]', password);
  await page.click('#login button');
}

async function loggedIn(page) {
  await page.waitForSelector('#operate:not([hidden])', { timeout: T });
}

const hooks = (page) => page.evaluate(() => ({
  frames: window.fieldlink.frames,
  maxGapMs: window.fieldlink.maxGapMs,
  maxMediaGapMs: window.fieldlink.maxMediaGapMs,
  maxReceiveGapMs: window.fieldlink.maxReceiveGapMs,
  errors: window.fieldlink.errors,
}));

/// Waits until receiver `fd` plays `stream` (its stream_state says so).
async function playing(page, fd, stream) {
  await page.waitForFunction(([f, s]) => window.fieldlink.states.some((m) => m.conn_fd === f
    && m.stream_id === s && m.state === 'playing'), [fd, stream], { timeout: T });
}

async function grid() {
  const page = await newPage();
  await login(page, args.device, args.password);
  await loggedIn(page);
  await page.waitForSelector(`.chip[data-gwid="${args.gwid}"][data-stream="3"]`, { timeout: T });
  await page.click('#layout button[data-grid="4"]');
  // One stream per window, picked from each window's menu.
  for (let w = 0; w < 4; w++) {
    await page.selectOption(`.tile[data-window="${w}"] .pick`, `${args.gwid}#${w}`);
  }
  for (let fd = 0; fd < 4; fd++) await playing(page, fd, fd);
  await page.waitForTimeout(1000);
  const a = await hooks(page);
  await page.waitForTimeout(2000);
  const b = await hooks(page);
  out.decoding = { before: a.frames.slice(0, 4), after: b.frames.slice(0, 4) };

  // Switch: window 1 (conn_fd 0) from stream 0 to stream 2 by its menu.
  await page.selectOption('.tile[data-window="0"] .pick', `${args.gwid}#2`);
  await playing(page, 0, 2);
  const c = await hooks(page);
  await page.waitForTimeout(1500);
  const d = await hooks(page);
  out.switched = { before: c.frames[0], after: d.frames[0] };

  // Baseline gaps, then swap windows 1 and 2 (⇄ on each) and measure the same way.
  await page.evaluate(() => window.fieldlink.resetGaps());
  await page.waitForTimeout(2000);
  const base0 = await hooks(page);
  const gaps = (h) => ({ maxGapMs: h.maxGapMs.slice(0, 4), maxMediaGapMs: h.maxMediaGapMs.slice(0, 4), maxReceiveGapMs: h.maxReceiveGapMs.slice(0, 4) });
  out.baseline = gaps(base0);
  await page.evaluate(() => window.fieldlink.resetGaps());
  const fdAt = (w) => page.getAttribute(`.tile[data-window="${w}"]`, 'data-fd');
  const before = [await fdAt(0), await fdAt(1)];
  const framesAtSwap = (await hooks(page)).frames.slice(0, 4);
  const videoStats = () => page.evaluate(() => window.fieldlink.videoStats());
  const statsBefore = await videoStats();
  const statesAtSwap = await page.evaluate(() => window.fieldlink.states.length);
  await page.click('.tile[data-window="0"] .swap');
  await page.click('.tile[data-window="1"] .swap');
  await page.waitForTimeout(2000);
  const e = await hooks(page);
  const statsAfter = await videoStats();
  // Every stream_state the server sent during the swap (a re-routed receiver gets some).
  const statesDuringSwap = await page.evaluate((n) => window.fieldlink.states.slice(n), statesAtSwap);
  out.swap = {
    windowsBefore: before,
    windowsAfter: [await fdAt(0), await fdAt(1)],
    framesAtSwap,
    framesAfter: e.frames.slice(0, 4),
    mediaBackwards: await page.evaluate(() => window.fieldlink.mediaBackwards.slice(0, 4)),
    statsBefore: statsBefore.slice(0, 4),
    statsAfter: statsAfter.slice(0, 4),
    statesDuringSwap,
    ...gaps(e),
  };
  out.stats = await page.$$eval('.tile .stats', (els) => els.slice(0, 4).map((x) => x.textContent));
  out.states = await page.evaluate(() => window.fieldlink.states.length);
  out.errors = e.errors;
  if (args.screenshot) await page.screenshot({ path: args.screenshot });

  // Close window 2's receiver: the tile goes empty.
  await page.click('.tile[data-window="1"] .close');
  await page.waitForFunction(() => document.querySelector('.tile[data-window="1"] .state').textContent === 'empty', null, { timeout: T });
  out.closed = true;
}

const bannerText = (page) => page.textContent('#banner');

async function handover() {
  const [pa, pb] = [await newPage(1200, 800), await newPage(1200, 800)];
  await login(pa, ...args.a);
  await login(pb, ...args.b);
  await loggedIn(pa);
  await loggedIn(pb);
  const operate = (page) => page.click(`#fields li[data-id="${args.gwid}"] .operate`);
  await pa.waitForSelector(`#fields li[data-id="${args.gwid}"] .operate`, { timeout: T });
  await pb.waitForSelector(`#fields li[data-id="${args.gwid}"] .operate`, { timeout: T });
  await operate(pa);
  await operate(pb);
  await pa.waitForSelector('#request-master:not([disabled])', { timeout: T });
  await pa.click('#request-master');
  await pa.waitForFunction(() => !document.querySelector('#send').disabled, null, { timeout: T });
  const [a0, b0] = [args.a[0], args.b[0]];
  await pb.waitForFunction((m) => document.querySelector('#banner').textContent.includes(`master: ${m}`), a0, { timeout: T });
  out.step1 = { a: await bannerText(pa), b: await bannerText(pb), bSendDisabled: await pb.isDisabled('#send') };

  // B asks; the field device (automatic) grants; A becomes a guest.
  await pb.click('#request-master');
  await pb.waitForFunction(() => !document.querySelector('#send').disabled, null, { timeout: T });
  await pa.waitForFunction((m) => document.querySelector('#banner').textContent.includes(`master: ${m}`), b0, { timeout: T });
  out.step2 = {
    a: await bannerText(pa),
    b: await bannerText(pb),
    aSendDisabled: await pa.isDisabled('#send'),
    aTextDisabled: await pa.isDisabled('#send-text'),
    aInputDisabled: await pa.isDisabled('#input-on'),
  };

  // A (guest) sends anyway, bypassing its UI: the server refuses it.
  await pa.evaluate(() => window.fieldlink.sendIgnoringPermission('guest-sneaks-this'));
  await pa.waitForFunction(() => window.fieldlink.errors.some((e) => e.name === 'NOT_MASTER'), null, { timeout: T });
  out.guestRefused = true;

  // B sends a one-off message, then holds ArrowUp with keyboard input on at 50 Hz.
  await pb.fill('#send-text', 'hello from B');
  await pb.click('#send');
  await pb.selectOption('#input-rate', '50');
  await pb.check('#input-on');
  await pb.click('#grid');
  await pb.keyboard.down('ArrowUp');
  await pb.waitForTimeout(400);
  await pb.keyboard.up('ArrowUp');
  await pb.waitForTimeout(200);
  await pb.uncheck('#input-on');
  out.sent = true;

  // The test now writes a report on the field device's stdin: both consoles show it.
  const seen = (page) => page.waitForFunction((t) => window.fieldlink.reports.some((r) => r.text.includes(t)), args.report, { timeout: T });
  await seen(pa);
  await seen(pb);
  out.reportLog = { a: await pa.textContent('#log'), b: await pb.textContent('#log') };
  // B watches the stream in its first window (for the screenshot of a console in control).
  await pb.click(`.chip[data-gwid="${args.gwid}"][data-stream="0"]`);
  await playing(pb, 0, 0);
  await pb.waitForTimeout(1500);
  if (args.screenshot) await pb.screenshot({ path: args.screenshot });
}

/// The admin page with `token` entered (not waiting for the outcome).
async function openAdmin(token, width, height) {
  const page = await newPage(width, height);
  await page.goto(`${base}/admin`);
  await page.fill('#token', token);
  await page.click('#token-form button');
  return page;
}

async function admin() {
  const page = await openAdmin(args.token, 1400, 1000);
  await page.waitForSelector('#projects:not([hidden])', { timeout: T });
  const f = '#new-project';
  await page.fill(`${f} input[name=id]`, args.project);
  await page.fill(`${f} input[name=name]`, 'Acme quarry');
  await page.selectOption(`${f} select[name=Mode]`, '1');
  await page.click(`${f} .gen-key`);
  out.key = await page.inputValue(`${f} input[name=Key]`);
  await page.selectOption(`${f} select[name=FieldListEnable]`, '1');
  await page.click(`${f} button.primary`);
  await page.waitForSelector('#project:not([hidden])', { timeout: T });
  // A remote device that logs in only with key-derived passwords.
  await page.fill('#new-device input[name=id]', args.device);
  await page.selectOption('#new-device select[name=kind]', 'remote');
  await page.check('#new-device input[name=keyonly]');
  await page.click('#new-device button.primary');
  await page.waitForSelector(`#device-rows tr[data-id="${args.device}"]`, { timeout: T });
  await page.fill('#gen-password input[name=device_id]', args.device);
  await page.click('#gen-password button');
  await page.waitForSelector('#password-out:not([hidden]) .password', { timeout: T });
  out.password = await page.textContent('#password-out .password');
  if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });

  // The generated password logs in to the console.
  const op = await newPage();
  await login(op, `${args.project}/${args.device}`, out.password);
  await loggedIn(op);
  out.loggedInAs = await op.textContent('#who');
  // Back on the admin page, the device shows online.
  await page.click(`#project-rows tr[data-id="${args.project}"]`);
  await page.waitForSelector(`#device-rows tr[data-id="${args.device}"] .dot.on`, { timeout: T });
  out.onlineInAdmin = true;
  // A wrong admin token is refused with a message.
  const other = await openAdmin('not-the-token');
  await other.waitForSelector('#msg:not([hidden])', { timeout: T });
  out.wrongToken = await other.textContent('#msg .text');
}

async function logins() {
  out.results = [];
  for (const [device, password] of args.tries) {
    const page = await newPage(1000, 700);
    await login(page, device, password);
    await page.waitForSelector('#msg:not([hidden])', { timeout: T });
    out.results.push({
      message: await page.textContent('#msg .text'),
      loginShown: await page.isVisible('#login'),
      operateShown: await page.isVisible('#operate'),
    });
    if (args.screenshot && out.results.length === 1) await page.screenshot({ path: args.screenshot });
    await page.context().close();
  }
}

/// Waits for the console to report error `name`; returns the message bar's text.
async function expectError(page, name) {
  await page.waitForFunction((n) => window.fieldlink.errors.some((e) => e.name === n), name, { timeout: T });
  await page.waitForSelector('#msg:not([hidden])', { timeout: T });
  const text = await page.textContent('#msg .text');
  await page.evaluate(() => { window.fieldlink.errors.length = 0; document.querySelector('#msg').hidden = true; });
  return text;
}

async function failures() {
  const page = await newPage();
  await login(page, args.device, args.password);
  await loggedIn(page);
  const openById = async (id, streams) => {
    await page.fill('#open-field input[name=gwid]', id);
    await page.fill('#open-field input[name=streams]', String(streams));
    await page.click('#open-field button');
  };
  const setCode = async (field, code) => {
    await page.fill('#session-code input[name=field]', field);
    await page.fill('#session-code input[name=code]', code);
    await page.click('#session-code button');
  };
  const m = {};
  // Not on the whitelist, no code.
  await openById(args.offline, 1);
  m.notWhitelisted = await expectError(page, 'NOT_WHITELISTED');
  // An expired code, then a valid one.
  await setCode(args.offline, args.expired_code);
  m.expiredCode = await expectError(page, 'SESSION_CODE_EXPIRED');
  await setCode(args.offline, args.code);
  await page.waitForFunction(() => document.querySelector('#msg').textContent.includes('Authorization code set'), null, { timeout: T });
  // Now it opens, but the field device is offline: asking for master fails, and a
  // window on it says why.
  await page.click(`#fields li[data-id="${args.offline}"] .operate`);
  await page.waitForFunction((id) => document.querySelector('#banner').textContent.includes(id), args.offline, { timeout: T });
  m.offlineBanner = await page.textContent('#banner');
  await page.click('#request-master');
  m.offlineMaster = await expectError(page, 'FIELD_OFFLINE');
  await page.selectOption('.tile[data-window="0"] .pick', `${args.offline}#0`);
  await page.waitForFunction(() => window.fieldlink.states.some((s) => s.conn_fd === 0 && s.state === 'failed'), null, { timeout: T });
  m.offlineWindow = await page.textContent('.tile[data-window="0"] .state');
  // A stream the online field device does not have.
  await openById(args.online, 9);
  await page.selectOption('.tile[data-window="1"] .pick', `${args.online}#8`);
  m.outOfRange = await expectError(page, 'STREAM_OUT_OF_RANGE');
  m.outOfRangeWindow = await page.textContent('.tile[data-window="1"] .state');
  out.messages = m;
}

async function gb() {
  // The admin page lists the registered camera, online, with its channels.
  const admin = await openAdmin(args.token, 1400, 900);
  await admin.waitForSelector('#gb:not([hidden])', { timeout: T });
  const row = `#gb-rows tr:has-text("${args.gb_id}")`;
  await admin.waitForSelector(`${row} .dot.on`, { timeout: T });
  out.gbRow = await admin.textContent(row);
  out.gbChannels = await admin.$$eval(`${row} li`, (els) => els.length);
  // Its second channel plays in a console window like any field device's stream.
  const page = await newPage();
  await login(page, args.device, args.password);
  await loggedIn(page);
  await page.waitForSelector(`.chip[data-gwid="${args.gwid}"][data-stream="1"]`, { timeout: T });
  out.fieldEntry = await page.textContent(`#fields li[data-id="${args.gwid}"]`);
  await page.click(`.chip[data-gwid="${args.gwid}"][data-stream="1"]`);
  await playing(page, 0, 1);
  const a = (await hooks(page)).frames[0];
  await page.waitForTimeout(2000);
  out.frames = (await hooks(page)).frames[0] - a;
  // Its G.711 audio (gb-device --audio-tone) is heard, as PCMA, on one of the audio lines.
  out.cameraParties = await page.evaluate(() => window.fieldlink.audioParties());
  out.cameraAudio = await page.evaluate(() => window.fieldlink.audioStats());
  out.cameraHeard = [];
  for (let i = 0; i < 5; i++) {
    out.cameraHeard.push(await page.evaluate(() => window.fieldlink.audioLevels().heard));
    await page.waitForTimeout(100);
  }
  // Playing now, as the admin page shows after a refresh.
  await admin.click('#refresh-gb');
  await admin.waitForSelector(`${row} li:has-text("playing")`, { timeout: T });
  if (args.screenshot) await admin.screenshot({ path: args.screenshot, fullPage: true });
}

async function diagnose() {
  // Stream 0 in window 1: its quality bars fill, then the report button explains it.
  const page = await newPage(1400, 1000);
  await login(page, args.device, args.password);
  await loggedIn(page);
  const chip = `.chip[data-gwid="${args.gwid}"][data-stream="0"]`;
  await page.waitForSelector(chip, { timeout: T });
  await page.click(chip);
  await playing(page, 0, 0);
  await page.waitForFunction(() => window.fieldlink.quality[0] !== null, null, { timeout: T });
  out.quality = await page.evaluate(() => window.fieldlink.quality[0]);
  out.bars = await page.getAttribute('.tile[data-fd="0"] .q', 'data-level');
  await page.waitForSelector('#diagnose:not([disabled])', { timeout: T });
  await page.click('#diagnose');
  out.measuring = await page.textContent('#diag-state');
  await page.waitForFunction(() => window.fieldlink.diagnoses.length > 0, null, { timeout: 25000 });
  out.kind = await page.evaluate(() => window.fieldlink.diagnoses[0].kind);
  out.report = await page.evaluate(() => window.fieldlink.diagnoses[0].report);
  out.text = await page.textContent('#diagnosis');
  out.badCells = await page.$$eval('#diagnosis td.bad', (els) => els.map((e) => e.textContent));
  if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
}

async function https() {
  // BASE is https://: Chromium trusts the test's CA through its NSS database ($HOME), so a
  // certificate error fails the first page load.
  const page = await newPage();
  await login(page, args.device, args.password);
  await loggedIn(page);
  out.protocol = await page.evaluate(() => location.protocol);
  const chip = `.chip[data-gwid="${args.gwid}"][data-stream="0"]`;
  await page.waitForSelector(chip, { timeout: T });
  await page.click(chip);
  await playing(page, 0, 0);
  await page.waitForTimeout(1000);
  out.frames = (await hooks(page)).frames;
}

async function voice() {
  const page = await newPage();
  await page.context().grantPermissions(['microphone'], { origin: base });
  await login(page, args.device, args.password);
  await loggedIn(page);
  const chip = `.chip[data-gwid="${args.gwid}"][data-stream="0"]`;
  await page.waitForSelector(chip, { timeout: T });
  await page.click(chip);
  await playing(page, 0, 0);
  // What the field device says: its packets arrive and are heard (level, energy).
  await page.waitForTimeout(3000);
  out.heard = [];
  for (let i = 0; i < 10; i++) {
    out.heard.push(await page.evaluate(() => window.fieldlink.audioLevels().heard));
    await page.waitForTimeout(100);
  }
  out.statsBefore = await page.evaluate(() => window.fieldlink.audioStats());
  out.meterIn = await page.$eval('#meter-in', (e) => e.style.width);
  out.parties = await page.evaluate(() => window.fieldlink.audioParties());
  out.partiesText = await page.textContent('#voice-parties');
  // Push to talk: hold the key. The test tone is sent as it is (noise suppression would
  // take a steady tone for noise).
  await page.uncheck('#voice-processing');
  await page.mouse.click(5, 5); // focus the page, not a field
  await page.keyboard.down('Backquote');
  await page.waitForTimeout(500);
  out.talking = await page.$eval('#talk', (e) => e.classList.contains('talking'));
  out.said = await page.evaluate(() => window.fieldlink.audioLevels().said);
  await page.waitForTimeout(args.talk_ms || 5000);
  await page.keyboard.up('Backquote');
  out.statsAfter = await page.evaluate(() => window.fieldlink.audioStats());
  // A page whose microphone is blocked says so.
  const denied = await newPage();
  await login(denied, args.device2 || args.device, args.password2 || args.password);
  await loggedIn(denied);
  await denied.click('#talk');
  await denied.waitForFunction(() => document.querySelector('#voice-note').textContent.length > 0, null, { timeout: T });
  out.deniedNote = await denied.textContent('#voice-note');
}

try {
  await ({ grid, handover, admin, logins, failures, gb, diagnose, https, voice })[scenario]();
  out.ok = true;
} catch (e) {
  out.ok = false;
  out.failure = String(e.stack || e);
} finally {
  console.log(JSON.stringify(out));
  await browser.close();
}
