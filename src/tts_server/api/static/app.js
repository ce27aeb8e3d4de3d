// tts-server WebUI: plain browser JavaScript, no build step and no third-party code.
"use strict";

(() => {
  // Formats a browser can play from an <audio> element (raw pcm cannot, so it is not offered here).
  const UI_FORMATS = ["wav", "mp3", "flac", "ogg", "opus"];
  const FORMAT_MIME = {
    wav: "audio/wav", mp3: "audio/mpeg", flac: "audio/flac",
    ogg: 'audio/ogg; codecs="vorbis"', opus: 'audio/ogg; codecs="opus"',
  };
  const KEY_STORAGE = "tts-server.api-key";

  const $ = (id) => document.getElementById(id);
  const el = {
    form: $("tts-form"), text: $("text"), used: $("char-used"), limit: $("char-limit"), counter: $("char-count"),
    voice: $("voice"), emotions: $("emotions"), moreEmotions: $("emotions-more"),
    moreToggle: $("more-emotions"), speed: $("speed"), speedValue: $("speed-value"),
    speedMin: $("speed-min"), speedMax: $("speed-max"), pitch: $("pitch"), pitchValue: $("pitch-value"),
    volume: $("volume"), volumeValue: $("volume-value"), resetProsody: $("reset-prosody"),
    formats: $("formats"), apiKey: $("api-key"), seed: $("seed"),
    advanced: $("advanced"), button: $("synthesize"), status: $("status"), error: $("error"),
    errorTitle: $("error-title"), errorDetail: $("error-detail"), result: $("result"), player: $("player"),
    playbackNote: $("playback-note"), meta: $("result-meta"), download: $("download"),
    stream: $("stream"), formatField: $("format-field"), live: $("live"), liveState: $("live-state"),
    liveProgress: $("live-progress"), stop: $("stop"), timestamps: $("timestamps"), karaoke: $("karaoke"),
    waveform: $("waveform"),
    preview: $("use-preview"), version: $("server-version"), showReading: $("show-reading"), reading: $("reading"),
  };

  const state = {
    limit: null, voices: new Map(), busy: false, loaded: false, objectUrl: null,
    countdown: null, reloadTimer: null, audio: null, live: null, readAlong: null, wave: null, frame: null,
  };

  // Python's len() counts code points; a JS string's length counts UTF-16 units, which differs for emoji and
  // rare CJK characters. Counting the same way as the server keeps the counter and the 422 in agreement.
  const charCount = (text) => Array.from(text).length;

  // ---------------------------------------------------------------- HTTP helpers

  class ApiError extends Error {
    constructor(status, message, code, param, retryAfter) {
      super(message);
      this.status = status;
      this.code = code;
      this.param = param;
      this.retryAfter = retryAfter;
    }
  }

  function authHeaders() {
    const key = el.apiKey.value.trim();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  function parseRetryAfter(value) {
    if (!value) return null;
    const seconds = Number(value);
    if (Number.isFinite(seconds)) return Math.max(0, Math.ceil(seconds));
    const date = Date.parse(value);
    return Number.isNaN(date) ? null : Math.max(0, Math.ceil((date - Date.now()) / 1000));
  }

  async function toApiError(response) {
    let message = "", code = null, param = null;
    try {
      const body = await response.json();
      if (body && body.error) {
        message = body.error.message || "";
        code = body.error.code || null;
        param = body.error.param || null;
      }
    } catch (_) {
      // Not an ErrorResponse (a proxy's HTML page, say): the status alone has to do.
    }
    return new ApiError(response.status, message || response.statusText || `HTTP ${response.status}`, code,
      param, parseRetryAfter(response.headers.get("Retry-After")));
  }

  // fetch() with the API key; a network failure or an error status becomes an ApiError.
  async function call(path, accept, body, signal) {
    const init = { headers: { Accept: accept, ...authHeaders() }, signal };
    if (body !== undefined) {
      init.method = "POST";
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, String(err), "network", null, null);
    }
    if (!response.ok) throw await toApiError(response);
    return response;
  }

  async function getJSON(path) {
    return (await call(path, "application/json")).json();
  }

  // ---------------------------------------------------------------- errors in plain language

  function describe(err) {
    if (!(err instanceof ApiError)) {
      return { title: "出错了 · Something went wrong", detail: String(err && err.message || err) };
    }
    const retry = err.retryAfter;
    switch (err.status) {
      case 0:
        return { title: "无法连接服务器 · Can't reach the server",
                 detail: "请检查服务器是否在运行以及网络连接。Check that the server is running and that you are online." };
      case 400: case 422:
        return { title: "请检查输入 · Please check your input", detail: err.message };
      case 401: case 403:
        return { title: "需要有效的 API 密钥 · A valid API key is required",
                 detail: "请在“高级”中填写 API 密钥后重试。Enter your API key under Advanced, then try again.",
                 needsKey: true };
      case 413:
        return { title: "请求太大 · The request is too large", detail: "请缩短文本。Please shorten the text." };
      case 429:
        return { title: "请求太频繁 · Too many requests",
                 detail: "已达到请求频率上限。You have reached the request rate limit.", retry };
      case 503: {
        const starting = err.code === "not_ready";
        return {
          title: starting ? "服务器尚未就绪 · The server is not ready yet" : "服务器繁忙 · The server is busy",
          detail: starting ? "语音模型正在加载。The voice model is still loading."
            : "当前请求过多。Too many requests are being processed right now.",
          retry: retry ?? 5,
        };
      }
      case 504:
        return { title: "合成超时 · Synthesis took too long",
                 detail: "请尝试较短的文本，或稍后重试。Try a shorter text, or try again later." };
      default:
        if (err.status >= 500) {
          return { title: "服务器出错 · The server ran into a problem",
                   detail: `请稍后重试。Please try again. (${err.message})` };
        }
        return { title: `请求失败 · Request failed (HTTP ${err.status})`, detail: err.message };
    }
  }

  function stopCountdown() {
    if (state.countdown) clearInterval(state.countdown);
    state.countdown = null;
  }

  function showError(info, { onRetryReady } = {}) {
    stopCountdown();
    el.errorTitle.textContent = info.title;
    el.error.hidden = false;
    if (info.needsKey) {
      el.advanced.open = true;
    }
    if (info.retry == null) {
      el.errorDetail.textContent = info.detail;
      return;
    }
    // Retry-After is a promise from the server: counting it down tells the user exactly when to try again.
    const until = Date.now() + info.retry * 1000;
    const render = () => {
      const left = Math.max(0, Math.ceil((until - Date.now()) / 1000));
      if (left > 0) {
        el.errorDetail.textContent = `${info.detail} 请在 ${left} 秒后重试。Please try again in ${left} s.`;
        return;
      }
      stopCountdown();
      el.errorDetail.textContent = `${info.detail} 现在可以重试。You can try again now.`;
      if (onRetryReady) onRetryReady();
      updateButton();
    };
    state.countdown = setInterval(render, 1000);
    render();
  }

  function clearError() {
    stopCountdown();
    el.error.hidden = true;
    el.errorTitle.textContent = "";
    el.errorDetail.textContent = "";
  }

  function setStatus(text) {
    el.status.textContent = text;
  }

  // ---------------------------------------------------------------- form state

  // Signed, so that "+1.5" and "-1.5" read as a shift from the voice's own pitch and loudness.
  const signed = (value, digits) => `${value > 0 ? "+" : ""}${value.toFixed(digits)}`;

  function updateProsody() {
    const speed = Number(el.speed.value), pitch = Number(el.pitch.value), volume = Number(el.volume.value);
    el.speedValue.textContent = `${speed.toFixed(2)}×`;
    el.pitchValue.textContent = signed(pitch, 1);
    el.pitch.setAttribute("aria-valuetext", `${signed(pitch, 1)} model units`);
    el.volumeValue.textContent = `${signed(volume, 0)} dB`;
    el.volume.setAttribute("aria-valuetext", `${signed(volume, 0)} dB`);
  }

  function resetProsody() {
    el.speed.value = "1";
    el.pitch.value = "0";
    el.volume.value = "0";
    updateProsody();
  }

  function updateCounter() {
    const used = charCount(el.text.value);
    el.used.textContent = String(used);
    const limit = state.limit;
    const over = limit != null && used > limit;
    el.counter.classList.toggle("over", over);
    el.counter.classList.toggle("near", limit != null && !over && used > limit * 0.9);
    el.text.setAttribute("aria-invalid", over ? "true" : "false");
  }

  function updateButton() {
    el.button.disabled = state.busy || !state.loaded || state.countdown !== null;
  }

  function setBusy(busy) {
    state.busy = busy;
    el.form.setAttribute("aria-busy", String(busy));
    el.button.classList.toggle("busy", busy);
    el.button.querySelector(".btn-label").innerHTML = busy
      ? '合成中… <span class="en">Synthesizing…</span>'
      : '合成 <span class="en">Synthesize</span>';
    updateButton();
  }

  function chip(name, value, checked, main, sub) {
    const label = document.createElement("label");
    label.className = "chip";
    const input = document.createElement("input");
    input.type = "radio";
    input.name = name;
    input.value = value;
    input.checked = checked;
    const text = document.createElement("span");
    text.textContent = main;
    if (sub) {
      const en = document.createElement("span");
      en.className = "en";
      en.textContent = sub;
      text.append(" · ", en);
    }
    label.append(input, text);
    return label;
  }

  function selected(name) {
    const input = el.form.querySelector(`input[name="${name}"]:checked`);
    return input ? input.value : null;
  }

  function emotionChip(voice, emotion, checked) {
    // Labels come from /v1/voices; a label equal to the name means the server knows no Chinese one.
    const zh = (voice.emotion_labels || {})[emotion];
    return zh && zh !== emotion
      ? chip("emotion", emotion, checked, zh, emotion)
      : chip("emotion", emotion, checked, emotion, "");
  }

  function showMoreEmotions(open) {
    el.moreEmotions.hidden = !open;
    el.moreToggle.setAttribute("aria-expanded", String(open));
    const count = el.moreEmotions.childElementCount;
    el.moreToggle.textContent = open ? "收起 · Fewer" : `更多 · More (${count})`;
  }

  function updateSeed() {
    const voice = state.voices.get(el.voice.value);
    el.seed.disabled = !(voice && voice.stochastic);
  }

  function renderEmotions() {
    const voice = state.voices.get(el.voice.value);
    const keep = selected("emotion");
    el.emotions.replaceChildren();
    el.moreEmotions.replaceChildren();
    el.moreToggle.hidden = true;
    el.moreEmotions.hidden = true;
    if (!voice) return;
    const current = voice.emotions.includes(keep) ? keep : voice.default_emotion;
    // The core emotions first; the rest of the model's vocabulary stays folded until asked for. A voice with no
    // core emotion (another engine) shows everything up front.
    const core = (voice.core_emotions || []).filter((e) => voice.emotions.includes(e));
    const first = core.length ? core : voice.emotions;
    const rest = voice.emotions.filter((e) => !first.includes(e));
    for (const emotion of first) el.emotions.append(emotionChip(voice, emotion, emotion === current));
    for (const emotion of rest) el.moreEmotions.append(emotionChip(voice, emotion, emotion === current));
    if (rest.length) {
      el.moreToggle.hidden = false;
      // A chosen emotion is never hidden behind the toggle.
      showMoreEmotions(rest.includes(current));
    }
    el.preview.disabled = !voice.preview_text;
  }

  function renderFormats(formats) {
    const offered = UI_FORMATS.filter((f) => formats.includes(f));
    const keep = selected("format");
    el.formats.replaceChildren();
    for (const format of offered) {
      const checked = keep ? keep === format : format === offered[0];
      el.formats.append(chip("format", format, checked, format.toUpperCase(), ""));
    }
  }

  function applyInfo(info) {
    state.limit = info.max_text_chars;
    el.limit.textContent = String(info.max_text_chars);
    el.speed.min = String(info.speed_min);
    el.speed.max = String(info.speed_max);
    el.speedMin.textContent = `${info.speed_min}×`;
    el.speedMax.textContent = `${info.speed_max}×`;
    renderFormats(info.formats);
    if (info.version) {
      el.version.textContent = `v${info.version}`;
      el.version.hidden = false;
    }
    updateCounter();
  }

  function applyVoices(data) {
    const previous = el.voice.value;
    state.voices = new Map(data.voices.map((v) => [v.name, v]));
    el.voice.replaceChildren();
    for (const voice of data.voices) {
      const option = document.createElement("option");
      option.value = voice.name;
      // Personal (fine-tuned) voices are marked so they stand out beside the model's own.
      option.textContent = voice.kind === "personal" ? `${voice.name} · 个人 personal` : voice.name;
      el.voice.append(option);
    }
    el.voice.value = state.voices.has(previous) ? previous : (data.default_voice || data.voices[0]?.name || "");
    el.voice.disabled = data.voices.length === 0;
    renderEmotions();
    updateSeed();
    const voice = state.voices.get(el.voice.value);
    if (!el.text.value && voice && voice.preview_text) {
      el.text.value = voice.preview_text;
      updateCounter();
    }
  }

  async function load() {
    clearTimeout(state.reloadTimer);
    state.loaded = false;
    updateButton();
    setStatus("正在加载音色… Loading voices…");
    try {
      const [info, voices] = await Promise.all([getJSON("/v1/info"), getJSON("/v1/voices")]);
      applyInfo(info);
      applyVoices(voices);
      state.loaded = true;
      clearError();
      setStatus(`已就绪，共 ${voices.voices.length} 个音色。Ready: ${voices.voices.length} voice(s).`);
      document.body.dataset.ready = "true";
    } catch (err) {
      setStatus("");
      const info = describe(err);
      if (err instanceof ApiError && err.status === 0) info.retry = 5;
      // A server that is starting or busy will answer soon: reload by itself instead of asking the user to.
      showError(info, { onRetryReady: info.retry != null ? load : undefined });
    }
    updateButton();
  }

  // ---------------------------------------------------------------- synthesis

  function stamp(date) {
    const p = (n) => String(n).padStart(2, "0");
    return `${date.getFullYear()}${p(date.getMonth() + 1)}${p(date.getDate())}-`
      + `${p(date.getHours())}${p(date.getMinutes())}${p(date.getSeconds())}`;
  }

  const safeName = (s) => String(s).replace(/[^A-Za-z0-9_-]+/g, "_").slice(0, 40) || "x";

  function formatBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
    return `${(n / 1024 / 1024).toFixed(2)} MB`;
  }

  function showResult(blob, response, request, elapsedMs, known = {}) {
    if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
    state.objectUrl = URL.createObjectURL(blob);
    el.player.src = state.objectUrl;
    el.player.load();

    const filename = `tts-${safeName(request.voice)}-${safeName(request.emotion)}-${stamp(new Date())}.${request.format}`;
    el.download.href = state.objectUrl;
    el.download.download = filename;
    el.download.title = filename;

    const playable = el.player.canPlayType(FORMAT_MIME[request.format] || blob.type) !== "";
    el.playbackNote.hidden = playable;
    el.playbackNote.textContent = playable ? ""
      : `此浏览器无法播放 ${request.format.toUpperCase()}，请下载后播放。`
        + `This browser cannot play ${request.format.toUpperCase()}; download it instead.`;

    const seconds = known.seconds ?? Number(response.headers.get("X-Audio-Duration"));
    const rate = known.rate ?? Number(response.headers.get("X-Sample-Rate"));
    const parts = [];
    if (Number.isFinite(seconds) && seconds > 0) parts.push(`${seconds.toFixed(2)} s`);
    if (rate) parts.push(`${rate / 1000} kHz`);
    parts.push(known.label ?? request.format.toUpperCase(), formatBytes(blob.size),
      `用时 took ${(elapsedMs / 1000).toFixed(2)} s`);
    el.meta.textContent = parts.join(" · ");
    el.result.hidden = false;
    setStatus(Number.isFinite(seconds) && seconds > 0
      ? `完成：${seconds.toFixed(2)} 秒音频。Done: ${seconds.toFixed(2)} s of audio.`
      : "完成。Done.");
  }


  // ---------------------------------------------------------------- read-along highlight and waveform

  // The text as sent, one span per code point (the timestamps' offsets count code points, like the server).
  function showReadAlong(text, doc) {
    const spans = Array.from(text).map((c) => {
      const span = document.createElement("span");
      span.textContent = c;
      return span;
    });
    el.karaoke.replaceChildren(...spans);
    // Syllables that point at no input (or at nothing) cannot be shown; the rest in time order.
    const syllables = doc.syllables
      .filter((s) => s.begin != null && s.end != null && s.end > s.begin && s.end_ms > s.start_ms)
      .sort((a, b) => a.start_ms - b.start_ms);
    state.readAlong = { spans, syllables, key: null };
    el.karaoke.hidden = false;
    highlight();
  }

  function clearReadAlong() {
    state.readAlong = null;
    el.karaoke.hidden = true;
    el.karaoke.replaceChildren();
    delete el.karaoke.dataset.syllable;
  }

  // Marks the syllable playing at the audio's current time, and everything said before it.
  function highlight() {
    const ra = state.readAlong;
    if (!ra) return;
    const ms = el.player.currentTime * 1000;
    let current = -1, spokenUntil = 0;
    for (let i = 0; i < ra.syllables.length; i++) {
      const s = ra.syllables[i];
      if (s.start_ms > ms) break;
      if (ms < s.end_ms) current = i;
      else spokenUntil = Math.max(spokenUntil, s.end);
    }
    const key = `${current}:${spokenUntil}`;
    if (key === ra.key) return;
    ra.key = key;
    const begin = current >= 0 ? ra.syllables[current].begin : -1;
    const end = current >= 0 ? ra.syllables[current].end : -1;
    ra.spans.forEach((span, i) => {
      const now = i >= begin && i < end;
      span.className = now ? "current" : (i < spokenUntil ? "spoken" : "");
    });
    el.karaoke.dataset.syllable = String(current);
  }

  function cssColor(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#4f46e5";
  }

  // Decodes the result (any format the browser plays) and keeps a min/max envelope to draw from.
  async function showWaveform(blob, doc) {
    state.wave = null;
    el.waveform.hidden = true;
    delete el.waveform.dataset.boundaries;
    const mine = {};
    state.waveFor = mine;
    let audio;
    try {
      const Offline = window.OfflineAudioContext || window.webkitOfflineAudioContext;
      if (!Offline) return;
      audio = await new Offline(1, 1, 16000).decodeAudioData(await blob.arrayBuffer());
    } catch (_) {
      return;  // a format this browser cannot decode: no waveform, nothing else lost
    }
    if (state.waveFor !== mine) return;  // a newer result is being shown
    const sentences = doc ? doc.sentences : [];
    state.wave = { samples: audio.getChannelData(0), duration: audio.duration, sentences, image: null, width: 0 };
    el.waveform.hidden = false;
    el.waveform.dataset.boundaries = String(Math.max(0, sentences.length - 1));
    renderWave();
  }

  function clearWaveform() {
    state.wave = null;
    state.waveFor = null;
    el.waveform.hidden = true;
  }

  function drawEnvelope(w, width, height) {
    const image = document.createElement("canvas");
    image.width = width;
    image.height = height;
    const g = image.getContext("2d");
    const mid = height / 2, per = w.samples.length / width;
    g.fillStyle = cssColor("--accent");
    for (let x = 0; x < width; x++) {
      let lo = 0, hi = 0;
      const from = Math.floor(x * per), to = Math.max(from + 1, Math.floor((x + 1) * per));
      for (let i = from; i < to && i < w.samples.length; i++) {
        const v = w.samples[i];
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      const top = mid - hi * mid, bottom = mid - lo * mid;
      g.fillRect(x, top, 1, Math.max(1, bottom - top));
    }
    // Sentence boundaries: the pause after each sentence shaded, a line where the next one starts.
    const ms = w.duration * 1000, dpr = window.devicePixelRatio || 1;
    g.fillStyle = "rgba(127, 127, 127, 0.18)";
    g.strokeStyle = cssColor("--muted");
    g.lineWidth = dpr;
    g.setLineDash([4 * dpr, 3 * dpr]);
    w.sentences.forEach((s, i) => {
      const x0 = (s.speech_end_ms / ms) * width, x1 = (s.end_ms / ms) * width;
      if (x1 > x0) g.fillRect(x0, 0, x1 - x0, height);
      if (i < w.sentences.length - 1) {
        g.beginPath();
        g.moveTo(Math.round(x1) + 0.5, 0);
        g.lineTo(Math.round(x1) + 0.5, height);
        g.stroke();
      }
    });
    return image;
  }

  function renderWave() {
    const w = state.wave;
    if (!w) return;
    const canvas = el.waveform, dpr = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * dpr));
    const height = Math.max(1, Math.round(canvas.clientHeight * dpr));
    if (!w.image || w.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
      w.image = drawEnvelope(w, width, height);
      w.width = width;
    }
    const g = canvas.getContext("2d");
    g.clearRect(0, 0, width, height);
    g.drawImage(w.image, 0, 0);
    const x = Math.min(1, el.player.currentTime / (w.duration || 1)) * width;
    g.fillStyle = "rgba(255, 255, 255, 0.35)";
    g.fillRect(x, 0, width - x, height);   // what is still to come, faded
    g.fillStyle = cssColor("--text");
    g.fillRect(Math.round(x), 0, Math.max(1, dpr), height);
  }

  // One animation loop while the audio plays; a paused or seeked player is drawn once.
  function tick() {
    cancelAnimationFrame(state.frame);
    highlight();
    renderWave();
    state.frame = !el.player.paused && !el.player.ended ? requestAnimationFrame(tick) : null;
  }

  function startTicking() {
    if (state.frame === null) state.frame = requestAnimationFrame(tick);
  }

  // ---------------------------------------------------------------- streaming playback (Web Audio)

  // How far ahead of "now" the first chunk (and any chunk after a stall) is scheduled: enough for the audio
  // thread to pick it up, small enough not to be heard as latency.
  const LEAD_S = 0.05;

  // A 44-byte RIFF header for 16-bit mono PCM: the streamed samples become a normal WAV file for download.
  function wavBlob(chunks, samples, rate) {
    const header = new DataView(new ArrayBuffer(44));
    const ascii = (offset, text) => {
      for (let i = 0; i < text.length; i++) header.setUint8(offset + i, text.charCodeAt(i));
    };
    const bytes = samples * 2;
    ascii(0, "RIFF"); header.setUint32(4, 36 + bytes, true); ascii(8, "WAVE");
    ascii(12, "fmt "); header.setUint32(16, 16, true); header.setUint16(20, 1, true); header.setUint16(22, 1, true);
    header.setUint32(24, rate, true); header.setUint32(28, rate * 2, true); header.setUint16(32, 2, true);
    header.setUint16(34, 16, true);
    ascii(36, "data"); header.setUint32(40, bytes, true);
    return new Blob([header, ...chunks], { type: "audio/wav" });
  }

  // One AudioContext per sample rate, created (or resumed) inside the click that asked for sound, which is
  // what browsers' autoplay rules require. At the stream's own rate no resampling happens before the output.
  function audioContext(rate) {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return null;
    if (state.audio && state.audio.sampleRate !== rate) {
      state.audio.close();
      state.audio = null;
    }
    if (!state.audio) {
      try {
        state.audio = new Ctx({ sampleRate: rate });
      } catch (_) {
        state.audio = new Ctx();  // a rate it cannot run at: AudioBuffers at the stream's rate get resampled
      }
    }
    state.audio.resume();
    return state.audio;
  }

  // Raw s16le mono PCM as it arrives -> AudioBufferSourceNodes started back to back on the context's clock, so
  // the pieces join without a gap; every byte is kept for the WAV download.
  class LivePlayback {
    constructor(ctx, onChange) {
      this.ctx = ctx;
      this.onChange = onChange;
      this.rate = ctx ? ctx.sampleRate : 0;
      this.chunks = [];
      this.samples = 0;
      this.odd = null;        // a byte of a sample split across two network reads
      this.sources = new Set();
      this.start = null;      // context time the first sample plays at
      this.next = 0;          // context time the next chunk starts at
      this.gaps = 0;          // chunks that came too late to follow on directly
      this.done = false;
      this.stopped = false;
      this.controller = new AbortController();
      this.frame = null;
    }

    push(bytes) {
      if (this.stopped || !bytes.length) return;
      let data = bytes;
      if (this.odd !== null) {
        data = new Uint8Array(bytes.length + 1);
        data[0] = this.odd;
        data.set(bytes, 1);
        this.odd = null;
      }
      if (data.length % 2) {
        this.odd = data[data.length - 1];
        data = data.subarray(0, data.length - 1);
      }
      const n = data.length / 2;
      if (!n) return;
      const copy = data.slice();
      this.chunks.push(copy);
      this.samples += n;
      if (!this.ctx) return;
      const view = new DataView(copy.buffer);
      const buffer = this.ctx.createBuffer(1, n, this.rate);
      const channel = buffer.getChannelData(0);
      for (let i = 0; i < n; i++) channel[i] = view.getInt16(2 * i, true) / 32768;
      const source = this.ctx.createBufferSource();
      source.buffer = buffer;
      source.connect(this.ctx.destination);
      const now = this.ctx.currentTime;
      if (this.start === null) {
        this.start = this.next = now + LEAD_S;
      } else if (this.next < now) {
        // The network fell behind playback: there is a gap; carry on from now.
        this.gaps += 1;
        this.next = now + LEAD_S;
      }
      source.start(this.next);
      this.next += n / this.rate;
      this.sources.add(source);
      source.onended = () => {
        this.sources.delete(source);
        this.onChange();
      };
      this.onChange();
    }

    // Seconds played so far, and seconds scheduled.
    position() {
      if (!this.ctx || this.start === null) return [0, 0];
      const total = this.next - this.start;
      return [Math.min(total, Math.max(0, this.ctx.currentTime - this.start)), total];
    }

    get playing() {
      return !this.stopped && this.sources.size > 0;
    }

    stop() {
      if (this.stopped) return;
      this.stopped = true;
      this.controller.abort();
      for (const source of this.sources) {
        source.onended = null;
        try { source.stop(); } catch (_) { /* not started yet */ }
      }
      this.sources.clear();
      this.onChange();
    }
  }

  function renderLive() {
    const live = state.live;
    if (!live) return;
    const [played, total] = live.position();
    el.liveProgress.max = Math.max(total, 0.001);
    el.liveProgress.value = played;
    el.liveProgress.setAttribute("aria-valuetext", `${played.toFixed(1)} / ${total.toFixed(1)} s`);
    let phase;
    if (live.stopped) phase = "stopped";
    else if (live.playing) phase = "playing";
    else if (live.done) phase = "ended";
    else phase = live.start === null ? "waiting" : "buffering";
    if (el.result.dataset.playback !== phase) {
      el.result.dataset.playback = phase;
      el.liveState.textContent = {
        waiting: "等待音频… Waiting for audio…",
        playing: "正在播放 · Playing",
        buffering: "缓冲中… Buffering…",
        ended: "播放完毕 · Finished",
        stopped: "已停止 · Stopped",
      }[phase];
    }
    el.stop.disabled = live.stopped || (live.done && !live.playing);
    if (phase === "playing" || phase === "buffering" || phase === "waiting") {
      cancelAnimationFrame(live.frame);
      live.frame = requestAnimationFrame(renderLive);
    }
  }

  function stopLive() {
    if (state.live) state.live.stop();
  }

  // Must be called from the click's own task (before any await): that is when audioContext() may start sound.
  async function synthesizeStream(request, voice, started) {
    const rate = voice && voice.sample_rate ? voice.sample_rate : 16000;
    const live = new LivePlayback(audioContext(rate), renderLive);
    state.live = live;
    if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
    state.objectUrl = null;
    el.player.removeAttribute("src");
    el.player.load();
    el.player.hidden = true;
    el.download.hidden = true;
    el.playbackNote.hidden = true;
    el.live.hidden = false;
    el.meta.textContent = "";
    el.result.hidden = false;
    delete el.result.dataset.firstAudioMs;
    delete el.result.dataset.receivedMs;
    renderLive();

    let response;
    try {
      response = await call("/v1/synthesize", "audio/L16, application/json",
        { ...request, format: "pcm", stream: true }, live.controller.signal);
    } catch (err) {
      if (live.stopped) {
        setStatus("已停止。Stopped.");
        return;
      }
      // Nothing was played: no result to show.
      live.stop();
      el.result.hidden = true;
      throw err;
    }
    const served = Number(response.headers.get("X-Sample-Rate"));
    if (served && served !== live.rate) {
      // Not the voice's rate after all: play it at the rate the server says (the browser resamples).
      live.rate = served;
    }
    setStatus("正在接收并播放… Receiving and playing…");
    const read = (bytes) => {
      const before = live.start;
      live.push(bytes);
      if (before === null && live.start !== null) {
        el.result.dataset.firstAudioMs = String(Math.round(performance.now() - started));
      }
    };
    try {
      if (response.body && response.body.getReader) {
        const reader = response.body.getReader();
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          read(value);
        }
      } else {
        read(new Uint8Array(await response.arrayBuffer()));
      }
    } catch (err) {
      if (live.stopped) {
        setStatus("已停止。Stopped.");
        return;
      }
      throw new ApiError(0, String(err), "stream_interrupted", null, null);
    } finally {
      live.done = true;
      renderLive();
    }
    el.result.dataset.receivedMs = String(Math.round(performance.now() - started));
    const blob = wavBlob(live.chunks, live.samples, live.rate);
    el.player.hidden = false;
    el.download.hidden = false;
    showResult(blob, response, { ...request, format: "wav" }, performance.now() - started,
      { seconds: live.samples / live.rate, rate: live.rate, label: "PCM → WAV" });
    showWaveform(blob, null);
    el.result.dataset.samples = String(live.samples);
    el.result.dataset.gaps = String(live.gaps);
  }

  async function synthesize(event) {
    event.preventDefault();
    if (state.busy || !state.loaded) return;
    clearError();
    const text = el.text.value;
    if (!text.trim()) {
      showError({ title: "请输入文本 · Please enter some text", detail: "文本框是空的。The text box is empty." });
      el.text.focus();
      return;
    }
    const used = charCount(text);
    if (state.limit != null && used > state.limit) {
      showError({
        title: "文本太长 · The text is too long",
        detail: `共 ${used} 个字符，上限为 ${state.limit}，请删去 ${used - state.limit} 个。`
          + `It has ${used} characters; the limit is ${state.limit}. Remove ${used - state.limit}.`,
      });
      el.text.focus();
      return;
    }
    const request = {
      text,
      voice: el.voice.value || null,
      emotion: selected("emotion"),
      speed: Number(el.speed.value),
      pitch: Number(el.pitch.value),
      volume: Number(el.volume.value),
      format: selected("format") || "wav",
    };
    // Only a stochastic voice's audio depends on it (the field is disabled for the others).
    if (!el.seed.disabled && el.seed.value.trim() !== "") request.seed = Number(el.seed.value);
    stopLive();
    clearReadAlong();
    clearWaveform();
    const streaming = el.stream.checked;
    const timed = !streaming && el.timestamps.checked;
    const voice = state.voices.get(el.voice.value);
    setBusy(true);
    setStatus("正在合成… Synthesizing…");
    const started = performance.now();
    try {
      if (streaming) {
        await synthesizeStream(request, voice, started);
      } else {
        state.live = null;
        el.live.hidden = true;
        el.player.hidden = false;
        el.download.hidden = false;
        delete el.result.dataset.playback;
        if (timed) {
          // JSON: the audio (base64) and its timings.
          const response = await call("/v1/synthesize", "application/json", { ...request, timestamps: true });
          const doc = await response.json();
          const bytes = Uint8Array.from(atob(doc.audio), (c) => c.charCodeAt(0));
          const blob = new Blob([bytes], { type: FORMAT_MIME[request.format] || "application/octet-stream" });
          showResult(blob, response, request, performance.now() - started);
          showReadAlong(request.text, doc);
          showWaveform(blob, doc);
        } else {
          const response = await call("/v1/synthesize", "audio/*, application/json", request);
          const blob = await response.blob();
          showResult(blob, response, request, performance.now() - started);
          showWaveform(blob, null);
        }
      }
    } catch (err) {
      setStatus("");
      const info = err instanceof ApiError && err.code === "stream_interrupted"
        ? { title: "音频流中断 · The audio stream broke off",
            detail: "已收到的部分已播放。What arrived has been played. Please try again." }
        : err instanceof ApiError && err.param === "timestamps"
          ? { title: "此服务器不提供时间戳 · This server gives no timestamps",
              detail: `请关闭“逐字高亮”后重试。Turn Highlight off and try again. (${err.message})` }
          : describe(err);
      showError(info);
      if (info.needsKey) el.apiKey.focus();
    } finally {
      setBusy(false);
    }
  }

  // ---------------------------------------------------------------- pronunciation preview (Advanced)

  function line(text, cls) {
    const p = document.createElement("p");
    p.textContent = text;
    if (cls) p.className = cls;
    el.reading.append(p);
  }

  async function showReading() {
    el.reading.replaceChildren();
    const text = el.text.value;
    if (!text.trim()) {
      line("请先输入文本 · Enter some text first.", "hint");
      return;
    }
    el.showReading.disabled = true;
    try {
      const response = await call("/v1/frontend/preview", "application/json",
        { text, voice: el.voice.value || null });
      const data = await response.json();
      line(data.normalized, "reading-normalized");
      for (const sentence of data.sentences) {
        const parts = sentence.words.map((w) =>
          `${w.break_before > 1 ? `#${w.break_before} ` : ""}${w.text}${w.source === "lexicon" ? "★" : ""} ` +
          `(${w.syllables.join(" ")})`);
        line(parts.join(" | "), "reading-sentence");
      }
      line(`词典版本 lexicon version ${data.lexicon_version}`, "hint");
    } catch (err) {
      const info = describe(err);
      line(`${info.title}: ${err instanceof ApiError ? err.message : info.detail}`, "reading-error");
    } finally {
      el.showReading.disabled = false;
    }
  }

  // ---------------------------------------------------------------- wiring

  function init() {
    try {
      el.apiKey.value = sessionStorage.getItem(KEY_STORAGE) || "";
    } catch (_) {
      // Storage can be disabled (privacy settings); the key then lives only in the input.
    }
    el.text.addEventListener("input", updateCounter);
    el.text.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        el.form.requestSubmit();
      }
    });
    el.voice.addEventListener("change", () => { renderEmotions(); updateSeed(); });
    el.moreToggle.addEventListener("click", () => showMoreEmotions(el.moreEmotions.hidden));
    for (const slider of [el.speed, el.pitch, el.volume]) slider.addEventListener("input", updateProsody);
    el.resetProsody.addEventListener("click", resetProsody);
    const streamChanged = () => {
      // A stream is raw PCM played as it comes; the download is then a WAV built from it. Timestamps come only
      // with a whole response.
      el.formatField.disabled = el.stream.checked;
      el.timestamps.disabled = el.stream.checked;
    };
    el.stream.addEventListener("change", streamChanged);
    streamChanged();
    el.stop.addEventListener("click", stopLive);
    el.player.addEventListener("play", startTicking);
    for (const name of ["pause", "seeked", "ended", "loadedmetadata"]) el.player.addEventListener(name, tick);
    window.addEventListener("resize", renderWave);
    el.waveform.addEventListener("click", (event) => {
      const w = state.wave;
      if (!w || !Number.isFinite(el.player.duration)) return;
      const rect = el.waveform.getBoundingClientRect();
      el.player.currentTime = ((event.clientX - rect.left) / rect.width) * el.player.duration;
    });
    el.preview.addEventListener("click", () => {
      const voice = state.voices.get(el.voice.value);
      if (voice) {
        el.text.value = voice.preview_text;
        updateCounter();
        el.text.focus();
      }
    });
    el.apiKey.addEventListener("change", () => {
      try {
        sessionStorage.setItem(KEY_STORAGE, el.apiKey.value.trim());
      } catch (_) { /* see above */ }
      load();
    });
    el.form.addEventListener("submit", synthesize);
    el.showReading.addEventListener("click", showReading);
    el.showReading.disabled = false;
    updateCounter();
    updateProsody();
    load();
  }

  init();
})();
