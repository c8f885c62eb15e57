// The console's voice (docs/console.md "Voice"): it hears the field devices it is in
// session with (volume, mute, a level meter) and talks to them push-to-talk (the Talk
// button, or holding the ` key), its microphone through getUserMedia.
//
// Audio lines as in docs/protocol.md: the first transceiver sends (its track is set only
// while talking) and, like the others, carries one party heard. Every line's track goes
// to a muted <audio> element (Chromium plays a remote track into WebAudio only then) and
// into one WebAudio graph: gain (volume, mute) to the speakers, an analyser for the meter.

export const AUDIO_LINES = 4;
export const TALK_KEY = 'Backquote';

/// RMS level (0..1) of an analyser's current window.
function level(analyser, buf) {
  analyser.getFloatTimeDomainData(buf);
  let sum = 0;
  for (const v of buf) sum += v * v;
  return Math.sqrt(sum / buf.length);
}

export class Voice {
  /// `ui`: {talk, mute, volume, processing, meterIn, meterOut, note, parties} elements;
  /// `onerror(text)`.
  constructor(ui, onerror) {
    this.ui = ui;
    this.onerror = onerror;
    this.ctx = null;
    this.transceivers = [];
    this.mic = null; // the microphone stream, once allowed
    this.talking = false;
    this.heard = []; // per line: the <audio> element and its source node
    this.timer = null;
    this.micDenied = null;
    this.parties = []; // per line: who the server says it carries
  }

  /// The server gave line `line` to `who` (a field device, or a camera's channel).
  heardOn(line, who) {
    this.parties[line] = who;
    const names = [...new Set(this.parties.filter(Boolean))];
    this.ui.parties.textContent = names.length ? `hearing: ${names.join(', ')}` : '';
  }

  /// Starts the audio graph; call from a user gesture (autoplay rules).
  ensureContext() {
    if (!this.ctx) {
      this.ctx = new AudioContext({ sampleRate: 48000 });
      this.gain = this.ctx.createGain();
      this.inAnalyser = this.ctx.createAnalyser();
      this.outAnalyser = this.ctx.createAnalyser();
      this.gain.connect(this.ctx.destination);
      this.gain.connect(this.inAnalyser);
      this.buf = new Float32Array(this.inAnalyser.fftSize);
      this.setVolume();
    }
    if (this.ctx.state === 'suspended') this.ctx.resume();
  }

  /// Adds the audio transceivers to a new peer connection; returns the offer's audio part.
  attach(pc) {
    this.pc = pc;
    this.heard = [];
    this.transceivers = [...Array(AUDIO_LINES).keys()].map((i) => pc.addTransceiver('audio', { direction: i === 0 ? 'sendrecv' : 'recvonly' }));
    if (this.talking && this.mic) this.transceivers[0].sender.replaceTrack(this.mic.getAudioTracks()[0]);
    clearInterval(this.timer);
    this.timer = setInterval(() => this.meter(), 100);
  }

  offer() {
    return { audio_mids: this.transceivers.map((t) => t.mid), audio_send: true, audio_receive: true };
  }

  /// A track arrived; true if it was one of the audio lines.
  ontrack(ev) {
    const line = this.transceivers.findIndex((t) => t.receiver.track === ev.track);
    if (line < 0) return false;
    this.ensureContext();
    const stream = new MediaStream([ev.track]);
    const el = new Audio();
    el.muted = true;
    el.srcObject = stream;
    el.play().catch(() => {});
    const src = this.ctx.createMediaStreamSource(stream);
    src.connect(this.gain);
    this.heard[line] = { el, src };
    return true;
  }

  /// The microphone is asked for again with the new processing setting.
  reopenMic() {
    if (this.mic) for (const t of this.mic.getTracks()) t.stop();
    this.mic = null;
  }

  setVolume() {
    if (!this.gain) return;
    this.gain.gain.value = this.ui.mute.checked ? 0 : Number(this.ui.volume.value) / 100;
  }

  /// Push-to-talk pressed: the microphone (asked for once) goes on the first line.
  async talk(on) {
    if (on === this.talking) return;
    this.talking = on;
    this.ui.talk.classList.toggle('talking', on);
    if (!on) {
      if (this.transceivers[0]) await this.transceivers[0].sender.replaceTrack(null);
      this.ui.note.textContent = this.micDenied || '';
      return;
    }
    this.ensureContext();
    try {
      if (!this.mic) {
        // Voice processing (echo cancellation, noise suppression, gain control) suits
        // speakers in a room; off, the microphone is sent as it is (a headset, music).
        const p = this.ui.processing.checked;
        this.mic = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: p, noiseSuppression: p, autoGainControl: p } });
        this.ctx.createMediaStreamSource(this.mic).connect(this.outAnalyser);
        this.micDenied = null;
      }
    } catch (e) {
      this.talking = false;
      this.ui.talk.classList.remove('talking');
      this.micDenied = e && e.name === 'NotAllowedError'
        ? 'The microphone is blocked for this page: allow it in the browser (the icon in the address bar), then press Talk again.'
        : `No microphone: ${e && e.message ? e.message : e}`;
      this.ui.note.textContent = this.micDenied;
      this.onerror(this.micDenied);
      return;
    }
    if (!this.talking) return; // released while the browser asked
    if (this.transceivers[0]) await this.transceivers[0].sender.replaceTrack(this.mic.getAudioTracks()[0]);
    this.ui.note.textContent = 'talking…';
  }

  /// The levels (0..1) heard and said now.
  levels() {
    if (!this.ctx) return { heard: 0, said: 0 };
    return {
      heard: level(this.inAnalyser, this.buf),
      said: this.talking && this.mic ? level(this.outAnalyser, this.buf) : 0,
    };
  }

  meter() {
    const l = this.levels();
    // dBFS from -60 to 0 as 0..100 %.
    const pct = (v) => Math.max(0, Math.min(100, ((20 * Math.log10(v + 1e-9)) + 60) * (100 / 60)));
    this.ui.meterIn.style.width = `${pct(l.heard)}%`;
    this.ui.meterOut.style.width = `${pct(l.said)}%`;
  }

  close() {
    clearInterval(this.timer);
    this.parties = [];
    this.ui.parties.textContent = '';
    for (const h of this.heard) if (h) { h.src.disconnect(); h.el.srcObject = null; }
    this.heard = [];
    this.transceivers = [];
  }
}
