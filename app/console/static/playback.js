// voicelog console: playback page. Fetches each WAV once (one audited read each), draws its waveform on a
// canvas and plays it from a blob: URL. The stereo WAV on the session clock (caller left, service right) is
// the one player that timeline events and transcripts seek, to exactly their session time; the "as sent"
// players are for listening to each direction on its own.
"use strict";

(function () {
  var players = {};

  function pcm16(buffer) {
    // Find the "data" chunk of a RIFF/WAVE file; return {rate, channels, samples: Int16Array (interleaved)}.
    var view = new DataView(buffer), offset = 12, rate = 24000, channels = 1;
    while (offset + 8 <= view.byteLength) {
      var id = String.fromCharCode(view.getUint8(offset), view.getUint8(offset + 1),
        view.getUint8(offset + 2), view.getUint8(offset + 3));
      var size = view.getUint32(offset + 4, true);
      if (id === "fmt ") {
        channels = view.getUint16(offset + 10, true);
        rate = view.getUint32(offset + 12, true);
      }
      if (id === "data") {
        var length = Math.min(size, view.byteLength - offset - 8) >> 1;
        return { rate: rate, channels: channels,
          samples: new Int16Array(buffer.slice(offset + 8, offset + 8 + length * 2)) };
      }
      offset += 8 + size + (size & 1);
    }
    return { rate: rate, channels: channels, samples: new Int16Array(0) };
  }

  function peaks(samples, columns, channels, channel) {
    // Min/max per column of one channel of interleaved samples.
    var frames = Math.floor(samples.length / channels);
    var out = new Float32Array(columns * 2), per = Math.max(1, Math.floor(frames / columns));
    for (var c = 0; c < columns; c++) {
      var lo = 0, hi = 0, start = c * per, end = Math.min(frames, start + per);
      for (var f = start; f < end; f++) {
        var i = f * channels + channel;
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
    var w = canvas.width, h = canvas.height, lanes = player.lanes.length || 1, laneH = h / lanes;
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
    if (player.lanes.length) {
      var played = player.audio.currentTime / duration * w;
      player.lanes.forEach(function (lane, n) {
        var mid = laneH * n + laneH / 2, half = laneH / 2 - 1;
        for (var x = 0; x < w; x++) {
          var lo = lane[x * 2], hi = lane[x * 2 + 1];
          ctx.fillStyle = x < played ? (style.getPropertyValue("--wave-played") || "#0b5cad")
            : (style.getPropertyValue("--wave") || "#5a7391");
          ctx.fillRect(x, mid - hi * half, 1, Math.max(1, (hi - lo) * half));
        }
      });
      ctx.fillStyle = style.getPropertyValue("--playhead") || "#c0392b";
      ctx.fillRect(Math.round(played), 0, 2, h);
    }
  }

  function markColor(kind) {
    return { speech: "#1e8449", response: "#6c3483", latency: "#d35400", transcript: "#b9770e", error: "#c0392b",
      gap: "#7f8c8d", end: "#34495e", session: "#2e86c1" }[kind] || null;
  }

  function collectMarks(track) {
    // Event ticks on the session clock only: that is where session times are positions.
    var marks = [];
    if (track !== "session") return marks;
    document.querySelectorAll("#events .seek").forEach(function (button) {
      var item = button.closest("li"), kind = (item.className.match(/event-(\w+)/) || [])[1];
      var color = markColor(kind);
      if (color) marks.push({ ms: Number(button.dataset.seekMs), color: color });
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
    var player = { audio: audio, canvas: canvas, marks: collectMarks(track), duration: 0, lanes: [] };
    players[track] = player;
    canvas.width = Math.max(300, Math.floor(canvas.getBoundingClientRect().width)) || 960;
    audio.removeAttribute("src");
    status.textContent = "Loading audio…";
    fetch(audio.dataset.src, { credentials: "same-origin", cache: "no-store" }).then(function (response) {
      if (!response.ok) throw new Error(response.status === 404 ? "not available" : "HTTP " + response.status);
      return response.arrayBuffer();
    }).then(function (buffer) {
      var wav = pcm16(buffer);
      player.duration = wav.samples.length / wav.channels / wav.rate;
      for (var channel = 0; channel < wav.channels; channel++) {
        player.lanes.push(peaks(wav.samples, canvas.width, wav.channels, channel));
      }
      audio.src = URL.createObjectURL(new Blob([buffer], { type: "audio/wav" }));
      audio.load();
      if (player.pendingSeek !== undefined) audio.currentTime = Math.min(player.pendingSeek, player.duration);
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

  function seek(ms) {
    // Exactly the event's session time on the session clock's player (applied once loaded if it is not yet).
    var player = players.session;
    if (!player) return;
    if (!player.duration) {
      player.pendingSeek = ms / 1000;
      return;
    }
    player.audio.currentTime = Math.min(ms / 1000, player.duration);
    draw(player);
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (!document.getElementById("playback")) return;
    load("session");
    load("caller");
    load("service");
    document.querySelectorAll("#events .seek, #transcripts .seek").forEach(function (button) {
      button.addEventListener("click", function () {
        document.querySelectorAll(".seek[aria-pressed]").forEach(function (b) { b.removeAttribute("aria-pressed"); });
        button.setAttribute("aria-pressed", "true");
        seek(Number(button.dataset.seekMs));
      });
    });
  });
})();
