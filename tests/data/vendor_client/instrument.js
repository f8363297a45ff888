// Test instrumentation for the vendor's client (a classic script, loaded before it). It only
// observes: every wrapped function calls the original with the same arguments and returns
// (or throws) what the original does. Results are read by the test from window.__soca.
(() => {
  const rec = window.__soca = {
    received: [],        // every JSON message the page got, audioBase64 replaced by its length
    sentText: [],        // text frames the page sent
    sentBinary: {},      // binary frame sizes the page sent -> count
    atob: [],            // each atob call: ok, input length, output length, FNV-1a of the output
    plays: [],           // each Audio play(): state pending/resolved/rejected, duration
    audios: [],          // the audio elements, for paused/ended snapshots
    afterBarge: [],      // snapshot of every audio element just after the page handled a barge
    errors: [],          // uncaught errors and unhandled rejections
  };
  const fnv = (s) => {
    let h = 0x811c9dc5;
    for (let i = 0; i < s.length; i++) { h ^= s.charCodeAt(i); h = Math.imul(h, 16777619) >>> 0; }
    return h;
  };
  const snapshot = () => rec.audios.map((a) => ({ paused: a.paused, ended: a.ended,
                                                 time: a.currentTime }));

  const RealWebSocket = window.WebSocket;
  window.WebSocket = class extends RealWebSocket {
    constructor(...args) {
      super(...args);
      // registered before the page sets onmessage: it sees each message first
      this.addEventListener('message', (e) => {
        if (typeof e.data !== 'string') return;
        let msg;
        try { msg = JSON.parse(e.data); } catch (err) { rec.received.push({ unparsed: true }); return; }
        const copy = Object.assign({}, msg);
        if (typeof copy.audioBase64 === 'string') copy.audioBase64 = copy.audioBase64.length;
        rec.received.push(copy);
        if (msg.type === 'barge') setTimeout(() => rec.afterBarge.push(snapshot()), 0);
      });
    }
    send(data) {
      if (typeof data === 'string') rec.sentText.push(data);
      else rec.sentBinary[data.byteLength] = (rec.sentBinary[data.byteLength] || 0) + 1;
      return super.send(data);
    }
  };

  const realAtob = window.atob;
  window.atob = function (s) {
    try {
      const out = realAtob.call(window, s);
      rec.atob.push({ ok: true, inLength: s.length, outLength: out.length, fnv: fnv(out) });
      return out;
    } catch (err) {
      rec.atob.push({ ok: false, inLength: s.length, error: err.name });
      throw err;
    }
  };

  const realPlay = HTMLMediaElement.prototype.play;
  HTMLAudioElement.prototype.play = function () {
    const entry = { state: 'pending', t: performance.now() };
    rec.plays.push(entry);
    rec.audios.push(this);
    this.addEventListener('ended', () => { entry.ended = performance.now(); });
    const promise = realPlay.call(this);
    promise.then(() => { entry.state = 'resolved'; entry.duration = this.duration; },
                 (err) => { entry.state = 'rejected'; entry.error = `${err.name}: ${err.message}`; });
    return promise;
  };

  window.addEventListener('error', (e) => rec.errors.push(String(e.message)));
  window.addEventListener('unhandledrejection', (e) => rec.errors.push(`unhandled rejection: ${e.reason}`));
})();
