// voicelog console: playback page. Fetches each direction's WAV once (one audited read), draws its
// waveform on a canvas, plays it from a blob: URL, and lets timeline events and transcripts seek.
"use strict";

(function () {
  var players = {};

  function pcm16(buffer) {
    // Find the "data" chunk of a RIFF/WAVE file; return {rate, samples: Int16Array}.
    var view = new DataView(buffer), offset = 12, rate = 24000;
    while (offset + 8 <= view.byteLength) {
      var id = String.fromCharCode(view.getUint8(offset), view.getUint8(offset + 1),
        view.getUint8(offset + 2), view.getUint8(offset + 3));
      var size = view.getUint32(offset + 4, true);
      if (id === "fmt ") rate = view.getUint32(offset + 12, true);
      if (id === "data") {
        var length = Math.min(size, view.byteLength - offset - 8) >> 1;
        return { rate: rate, samples: new Int16Array(buffer.slice(offset + 8, offset + 8 + length * 2)) };
      }
      offset += 8 + size + (size & 1);
    }
    return { rate: rate, samples: new Int16Array(0) };
  }

  function peaks(samples, columns) {
    var out = new Float32Array(columns * 2), per = Math.max(1, Math.floor(samples.length / columns));
    for (var c = 0; c < columns; c++) {
      var lo = 0, hi = 0, start = c * per, end = Math.min(samples.length, start + per);
      for (var i = start; i < end; i++) {
        var v = samples[i];
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      out[c * 2] = lo / 32768;
      out[c * 2 + 1] = hi / 32768;
    }
    return out;
  }

  function draw(player) {
    var canvas = player.canvas, ctx = canvas.getContext("2d");
    var w = canvas.width, h = canvas.height, mid = h / 2;
    var style = getComputedStyle(canvas);
    ctx.clearRect(0, 0, w, h);
    ctx.fillStyle = style.getPropertyValue("--wave-bg") || "#f3f5f8";
    ctx.fillRect(0, 0, w, h);
    var duration = player.duration || 1;
    // Event ticks aligned to this track's time.
    player.marks.forEach(function (m) {
      var x = Math.round((m.ms / 1000) / duration * w);
      if (x < 0 || x > w) return;
      ctx.fillStyle = m.color;
      ctx.fillRect(x, 0, 2, h);
    });
    if (player.peaks) {
      var played = player.audio.currentTime / duration * w;
      for (var x = 0; x < w; x++) {
        var lo = player.peaks[x * 2], hi = player.peaks[x * 2 + 1];
        ctx.fillStyle = x < played ? (style.getPropertyValue("--wave-played") || "#0b5cad")
          : (style.getPropertyValue("--wave") || "#5a7391");
        ctx.fillRect(x, mid - hi * mid, 1, Math.max(1, (hi - lo) * mid));
      }
      ctx.fillStyle = style.getPropertyValue("--playhead") || "#c0392b";
      ctx.fillRect(Math.round(played), 0, 2, h);
    }
  }

  function markColor(kind) {
    return { speech: "#1e8449", response: "#6c3483", transcript: "#b9770e", error: "#c0392b",
      gap: "#7f8c8d", end: "#34495e", session: "#2e86c1" }[kind] || null;
  }

  function collectMarks(track) {
    var marks = [];
    document.querySelectorAll("#events .seek").forEach(function (button) {
      var item = button.closest("li"), kind = (item.className.match(/event-(\w+)/) || [])[1];
      var color = markColor(kind);
      if (!color || (button.dataset.track !== track && kind !== "gap" && kind !== "error")) return;
      marks.push({ ms: Number(button.dataset.seekMs), color: color });
    });
    return marks;
  }

  function animate(player) {
    draw(player);
    if (!player.audio.paused) window.requestAnimationFrame(function () { animate(player); });
  }

  function load(track) {
    var figure = document.querySelector('.track[data-track="' + track + '"]');
    if (!figure) return;
    var audio = figure.querySelector("audio"), canvas = figure.querySelector("canvas");
    var status = figure.querySelector(".track-status");
    var player = { audio: audio, canvas: canvas, marks: collectMarks(track), duration: 0, peaks: null };
    players[track] = player;
    canvas.width = Math.max(300, Math.floor(canvas.getBoundingClientRect().width)) || 960;
    audio.removeAttribute("src");
    status.textContent = "Loading audio…";
    fetch(audio.dataset.src, { credentials: "same-origin", cache: "no-store" }).then(function (response) {
      if (!response.ok) throw new Error(response.status === 404 ? "not available" : "HTTP " + response.status);
      return response.arrayBuffer();
    }).then(function (buffer) {
      var wav = pcm16(buffer);
      player.duration = wav.samples.length / wav.rate;
      player.peaks = peaks(wav.samples, canvas.width);
      audio.src = URL.createObjectURL(new Blob([buffer], { type: "audio/wav" }));
      audio.load();
      status.textContent = player.duration.toFixed(2) + " s of audio";
      figure.dataset.loaded = "true";
      draw(player);
    }).catch(function (error) {
      status.textContent = "Audio could not be loaded (" + error.message + ").";
    });
    audio.addEventListener("play", function () { animate(player); });
    audio.addEventListener("seeked", function () { draw(player); });
    canvas.addEventListener("click", function (event) {
      if (!player.duration) return;
      var rect = canvas.getBoundingClientRect();
      audio.currentTime = (event.clientX - rect.left) / rect.width * player.duration;
      draw(player);
    });
  }

  function seek(ms, track) {
    Object.keys(players).forEach(function (name) {
      var player = players[name];
      if (!player.duration) return;
      player.audio.currentTime = Math.min(ms / 1000, player.duration);
      draw(player);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (!document.getElementById("playback")) return;
    load("caller");
    load("service");
    document.querySelectorAll(".seek").forEach(function (button) {
      button.addEventListener("click", function () {
        document.querySelectorAll(".seek[aria-pressed]").forEach(function (b) { b.removeAttribute("aria-pressed"); });
        button.setAttribute("aria-pressed", "true");
        seek(Number(button.dataset.seekMs), button.dataset.track);
      });
    });
  });
})();
