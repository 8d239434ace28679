// Player: hls.js (quality menu: auto + each rung), dash.js on request, the browser's own HLS
// where hls.js cannot run (Safari on iOS); private videos through signed playback URLs.
import { ApiError, api } from "./api.js";
import { STATUS_TEXT, duration, el, eta, percent } from "./format.js";

let dashLoading = null;

function loadDash() {
  // dash.js is large and optional: fetched only when someone picks DASH.
  dashLoading ||= new Promise((resolve, reject) => {
    const script = el("script", { src: "/web/vendor/dash.mediaplayer.min.js" });
    script.onload = () => resolve(window.dashjs);
    script.onerror = () => reject(new Error("dash.js did not load"));
    document.head.append(script);
  });
  return dashLoading;
}

async function sources(id, params) {
  if (params.t) {
    // A shared signed link: no sign-in needed, the token is the permission.
    const root = `/s/${encodeURIComponent(params.t)}/videos/${id}`;
    let video = null;
    try {
      video = await api(`/api/v1/videos/${id}`);
    } catch {
      // private and not ours: the signed URL still plays
    }
    return { video, hls: `${root}/master.m3u8`, dash: `${root}/manifest.mpd`, token: params.t };
  }
  const video = await api(`/api/v1/videos/${id}`);
  if (video.visibility === "private") {
    const signed = await api(`/api/v1/videos/${id}/playback-url`, { method: "POST" });
    return { video, hls: signed.hls_url, dash: signed.dash_url, token: signed.token };
  }
  return { video, hls: video.hls_url, dash: video.dash_url, token: null };
}

export async function mount(main, params) {
  const id = params.id;
  let src;
  try {
    src = await sources(id, params);
  } catch (error) {
    const text = error instanceof ApiError && error.status === 401 ? "This video is private: sign in with the wallet that uploaded it."
      : error instanceof ApiError && error.status === 403 ? "This video is private to another wallet."
        : error instanceof ApiError && error.status === 404 ? "There is no such video." : `Could not load the video: ${error.message}`;
    main.append(el("div", { class: "empty", text }));
    return null;
  }
  const video = src.video;
  if (video && video.status !== "ready" && video.status !== "transcoding") {
    main.append(el("h1", { text: video.title || video.filename }),
      el("div", { class: "empty", text: `${STATUS_TEXT[video.status]}${video.status === "failed" ? `: ${video.error || ""}` : ""}. ` +
        "The player opens when the first segments are ready." }));
    const timer = setTimeout(() => window.dispatchEvent(new HashChangeEvent("hashchange")), 3000);
    return () => clearTimeout(timer);
  }

  const media = el("video", { id: "video", controls: true, playsinline: true, preload: "metadata",
    poster: video && video.poster_url ? video.poster_url : undefined, "aria-label": "Video player" });
  const engine = el("select", { id: "engine" },
    el("option", { value: "hls", text: "HLS" }), el("option", { value: "dash", text: "DASH" }));
  const quality = el("select", { id: "quality" }, el("option", { value: "-1", text: "Auto" }));
  const nowPlaying = el("div", { class: "muted", id: "now-playing" });
  const shareUrl = `${location.origin}/#/watch/${id}${src.token && video && video.visibility === "private" ? `?t=${encodeURIComponent(src.token)}` : ""}`;
  const share = el("input", { type: "url", id: "share", readonly: true, value: shareUrl });
  const copy = el("button", { type: "button", class: "ghost", onclick: async () => {
    share.select();
    try {
      await navigator.clipboard.writeText(share.value);
      copy.textContent = "Copied";
    } catch {
      document.execCommand("copy");
    }
  } }, "Copy");

  main.append(el("div", { class: "player" },
    el("div", {}, media,
      el("h1", { style: "margin-top:.8rem", text: (video && (video.title || video.filename)) || "Shared video" }),
      video ? el("div", { class: "meta" },
        el("span", { class: `badge ${video.status}`, text: STATUS_TEXT[video.status] }),
        video.visibility === "private" ? el("span", { class: "badge private", text: "Private" }) : null,
        el("span", { text: duration(video.duration) }),
        video.status === "transcoding" ? el("span", { text: `${percent(video.progress)} transcoded · ${eta(video.eta_s)}` }) : null) : null),
    el("aside", { class: "panel" },
      el("div", { class: "field" }, el("label", { for: "quality", text: "Quality" }), quality),
      el("div", { class: "field" }, el("label", { for: "engine", text: "Streaming format" }), engine),
      nowPlaying,
      el("div", { class: "field" }, el("label", { for: "share", text: "Share link" }), el("div", { class: "share" }, share, copy)),
      video && video.visibility === "private" ? el("div", { class: "muted", text: "A private video's link carries a signed token and expires." }) : null,
      el("div", { class: "muted" }, "Keys: ", el("kbd", { text: "Space" }), " play/pause, ", el("kbd", { text: "←" }), el("kbd", { text: "→" }),
        " seek 5 s, ", el("kbd", { text: "↑" }), el("kbd", { text: "↓" }), " volume, ", el("kbd", { text: "f" }), " full screen, ",
        el("kbd", { text: "m" }), " mute"))));

  let hls = null;
  let dash = null;
  const state = { engine: "", levels: [], level: -1 };
  window.sgPlayer = state; // read by tests and handy in the console

  function showLevel() {
    const height = media.videoHeight;
    nowPlaying.textContent = height ? `Playing ${height}p (${state.engine})` : "";
  }

  function fillQualities(list) {
    quality.replaceChildren(el("option", { value: "-1", text: "Auto" }),
      ...list.map((item, index) => el("option", { value: String(index), text: item })));
    state.levels = list;
  }

  function destroy() {
    if (hls) hls.destroy();
    if (dash) dash.destroy();
    hls = dash = null;
    media.removeAttribute("src");
  }

  async function attach(kind) {
    destroy();
    state.engine = kind;
    state.level = -1;
    if (kind === "dash") {
      const dashjs = await loadDash();
      dash = dashjs.MediaPlayer().create();
      dash.initialize(media, src.dash, false);
      dash.on(dashjs.MediaPlayer.events.STREAM_INITIALIZED, () => {
        const reps = dash.getRepresentationsByType ? dash.getRepresentationsByType("video") : [];
        fillQualities(reps.map((r) => `${r.height}p`));
      });
    } else if (window.Hls && window.Hls.isSupported()) {
      hls = new window.Hls({ capLevelToPlayerSize: false });
      hls.on(window.Hls.Events.MANIFEST_PARSED, (_event, data) => {
        fillQualities(data.levels.map((l) => `${l.height}p`));
      });
      hls.on(window.Hls.Events.LEVEL_SWITCHED, (_event, data) => {
        state.playingLevel = data.level;
        showLevel();
      });
      hls.loadSource(src.hls);
      hls.attachMedia(media);
    } else if (media.canPlayType("application/vnd.apple.mpegurl")) {
      state.engine = "native";
      media.src = src.hls; // Safari plays HLS itself; it picks the rung
      fillQualities([]);
    } else {
      nowPlaying.textContent = "This browser can play neither HLS nor DASH.";
    }
  }

  quality.addEventListener("change", () => {
    const index = parseInt(quality.value, 10);
    state.level = index;
    if (hls) {
      hls.currentLevel = index; // -1: automatic
    } else if (dash) {
      dash.updateSettings({ streaming: { abr: { autoSwitchBitrate: { video: index < 0 } } } });
      if (index >= 0) dash.setRepresentationForTypeByIndex("video", index, true);
    }
  });
  engine.addEventListener("change", () => attach(engine.value));
  media.addEventListener("resize", showLevel);

  const onKey = (event) => {
    const target = event.target;
    if (target && (target.tagName === "INPUT" || target.tagName === "SELECT" || target.tagName === "TEXTAREA")) return;
    if (target && target.tagName === "BUTTON" && event.key === " ") return;
    switch (event.key) {
      case " ": case "k":
        if (media.paused) media.play(); else media.pause();
        break;
      case "ArrowLeft": media.currentTime = Math.max(0, media.currentTime - 5); break;
      case "ArrowRight": media.currentTime = Math.min(media.duration || Infinity, media.currentTime + 5); break;
      case "ArrowUp": media.volume = Math.min(1, media.volume + 0.1); break;
      case "ArrowDown": media.volume = Math.max(0, media.volume - 0.1); break;
      case "f":
        if (document.fullscreenElement) document.exitFullscreen();
        else media.requestFullscreen?.();
        break;
      case "m": media.muted = !media.muted; break;
      default: return;
    }
    event.preventDefault();
  };
  document.addEventListener("keydown", onKey);
  await attach(params.format === "dash" ? "dash" : "hls");
  engine.value = state.engine === "dash" ? "dash" : "hls";
  return () => {
    document.removeEventListener("keydown", onKey);
    destroy();
  };
}
