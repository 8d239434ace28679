// Upload: drag-and-drop or a file picker, resumable over tus (tus-js-client). The upload's URL is
// kept in localStorage under the file's fingerprint, so after a reload or a dropped network
// choosing the same file again resumes where the server stopped; then the transcode is followed
// until the video is ready.
import { api, authHeaders, session } from "./api.js";
import { STATUS_TEXT, bytes, el, eta, percent } from "./format.js";

// 8 MiB PATCHes: a lost request costs little on a flaky link. A slow link may want smaller
// ones: localStorage "streamgate.upload.chunk_size" (bytes) overrides it.
const DEFAULT_CHUNK = 8 * 1024 * 1024;
const POLL_MS = 1000;

// One upload at a time, kept across page changes inside the app.
let current = null;

function chunkSize() {
  const override = parseInt(localStorage.getItem("streamgate.upload.chunk_size") || "", 10);
  return override > 0 ? override : DEFAULT_CHUNK;
}

async function interrupted() {
  try {
    return await window.tus.defaultOptions.urlStorage.findAllUploads();
  } catch {
    return [];
  }
}

function speedometer() {
  const samples = [];
  return (uploaded) => {
    const now = performance.now();
    samples.push([now, uploaded]);
    while (samples.length > 2 && now - samples[0][0] > 3000) samples.shift();
    const [t0, b0] = samples[0];
    return now - t0 > 200 ? ((uploaded - b0) * 1000) / (now - t0) : null;
  };
}

function start(file, title, visibility, render) {
  const state = { file, title, visibility, phase: "starting", uploaded: 0, total: file.size, speed: null,
    resumedFrom: null, url: null, video: null, error: null, upload: null, poll: null };
  current = state;
  const speed = speedometer();
  const upload = new window.tus.Upload(file, {
    endpoint: "/api/v1/uploads",
    chunkSize: chunkSize(),
    retryDelays: [0, 1000, 3000, 5000, 10000, 20000],
    storeFingerprintForResuming: true,
    removeFingerprintOnSuccess: true,
    metadata: { filename: file.name, filetype: file.type || "application/octet-stream", title, visibility },
    headers: authHeaders(),
    onUploadUrlAvailable() {
      state.url = upload.url;
      render();
    },
    onProgress(uploaded, total) {
      state.phase = "uploading";
      state.uploaded = uploaded;
      state.total = total;
      state.speed = speed(uploaded);
      render();
    },
    onSuccess() {
      state.phase = "processing";
      state.uploaded = state.total;
      render();
      follow(state, render);
    },
    onError(error) {
      const status = error.originalResponse ? error.originalResponse.getStatus() : 0;
      state.phase = "error";
      state.error = status === 401 ? "This server wants you signed in to upload: sign in with your wallet, then choose the file again."
        : status === 413 ? "The file is larger than this server accepts."
          : `The upload stopped: ${error.message.split("\n")[0]}. Choose the same file to resume.`;
      render();
    },
  });
  state.upload = upload;
  upload.findPreviousUploads().then((previous) => {
    const match = previous.find((p) => p.size === file.size);
    if (match) {
      upload.resumeFromPreviousUpload(match);
      state.resumedFrom = match.uploadUrl;
    }
    upload.start();
    render();
  });
}

async function follow(state, render) {
  const id = state.url.split("/").filter(Boolean).pop();
  try {
    state.video = await api(`/api/v1/videos/${id}`);
    render();
  } catch (error) {
    state.video = { id, status: "queued", progress: 0, eta_s: null, error: error.message };
  }
  if (state.video.status !== "ready" && state.video.status !== "failed" && current === state) {
    state.poll = setTimeout(() => follow(state, render), POLL_MS);
  }
}

function progressView(state) {
  const box = el("section", { class: "panel stack", id: "upload-status", "data-phase": state.phase,
    "data-upload-url": state.url || "", "aria-label": "Upload progress" });
  const name = el("div", { class: "row" }, el("strong", { text: state.title || state.file.name }),
    el("span", { class: "muted", text: bytes(state.total) }));
  box.append(name);
  if (state.resumedFrom) {
    box.append(el("div", { id: "upload-resumed", class: "muted", text: "Resumed the earlier upload of this file." }));
  }
  const fraction = state.total ? state.uploaded / state.total : 0;
  box.append(el("label", { for: "upload-bar", text: state.phase === "processing" ? "Uploaded" : "Uploading" }),
    el("progress", { id: "upload-bar", max: "1", value: String(fraction) }),
    el("div", { class: "stats" },
      el("span", { id: "upload-percent", text: percent(fraction) }),
      el("span", { text: `${bytes(state.uploaded)} of ${bytes(state.total)}` }),
      state.speed !== null && state.phase === "uploading" ? el("span", { id: "upload-speed", text: `${bytes(state.speed)}/s` }) : null));
  if (state.phase === "uploading" || state.phase === "starting") {
    box.append(el("div", { class: "row" },
      el("button", { type: "button", class: "ghost", onclick: () => { state.upload.abort(); state.phase = "paused"; current.render(); } }, "Pause")));
  }
  if (state.phase === "paused") {
    box.append(el("div", { class: "row" },
      el("button", { type: "button", onclick: () => { state.phase = "uploading"; state.upload.start(); current.render(); } }, "Resume")));
  }
  if (state.error) box.append(el("div", { class: "notice", "data-kind": "error", role: "alert", text: state.error }));
  const video = state.video;
  if (video) {
    const t = video.status === "transcoding" ? `${percent(video.progress)} · ${eta(video.eta_s)}` : "";
    const bar = el("progress", { id: "transcode-bar", max: "1", value: String(video.progress || 0) });
    box.append(el("label", { for: "transcode-bar" }, "Transcoding: ",
      el("span", { id: "transcode-status", "data-status": video.status, text: STATUS_TEXT[video.status] || video.status })),
    bar, el("div", { class: "stats", id: "transcode-progress", text: t }));
    if (video.status === "ready") {
      box.append(el("div", { class: "row" },
        el("a", { class: "button", id: "watch-link", href: `#/watch/${video.id}` }, "Watch now"),
        el("button", { type: "button", class: "ghost", onclick: () => { current = null; location.hash = "#/upload"; window.dispatchEvent(new HashChangeEvent("hashchange")); } }, "Upload another")));
    }
    if (video.status === "failed") box.append(el("div", { class: "notice", "data-kind": "error", text: video.error || "The transcode failed." }));
  }
  return box;
}

export async function mount(main) {
  const signedIn = Boolean(session());
  const input = el("input", { type: "file", id: "file", accept: "video/*,.mkv,.mov,.mp4,.webm,.avi" });
  const drop = el("label", { class: "drop", for: "file" },
    el("strong", { text: "Drop a video here" }), el("span", { class: "muted", text: "or click to choose a file" }), input);
  const title = el("input", { type: "text", id: "title", placeholder: "From the file name", maxlength: "200" });
  const visibility = el("select", { id: "visibility" },
    el("option", { value: "public", text: "Public: listed in the library" }),
    el("option", { value: "private", text: "Private: only you (and signed links)" }));
  const holder = el("div", { id: "upload-holder" });
  const earlier = el("div", { id: "interrupted" });
  main.append(el("h1", { text: "Upload a video" }),
    el("div", { class: "stack" },
      signedIn ? null : el("div", { class: "notice", "data-kind": "info" },
        "Uploads are tied to your wallet: sign in with the button at the top first (some servers allow anonymous uploads)."),
      el("div", { class: "row" },
        el("div", { class: "field" }, el("label", { for: "title", text: "Title" }), title),
        el("div", { class: "field" }, el("label", { for: "visibility", text: "Visibility" }), visibility)),
      drop, earlier, holder));

  let mounted = true;
  const render = () => {
    if (mounted && current) holder.replaceChildren(progressView(current));
  };
  const choose = (file) => {
    if (!file) return;
    if (current && (current.phase === "uploading" || current.phase === "starting")) current.upload.abort();
    if (current && current.poll) clearTimeout(current.poll);
    earlier.replaceChildren();
    start(file, title.value.trim() || file.name.replace(/\.[^.]+$/, ""), visibility.value, render);
    current.render = render;
    render();
  };
  input.addEventListener("change", () => choose(input.files[0]));
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    choose(event.dataTransfer.files[0]);
  });

  if (current) {
    current.render = render;
    render();
  } else {
    const previous = await interrupted();
    if (previous.length) {
      earlier.append(el("div", { class: "notice", "data-kind": "info" },
        "Interrupted upload", previous.length > 1 ? "s" : "", ": ",
        previous.map((p) => `${(p.metadata && (p.metadata.title || p.metadata.filename)) || "a file"} (${bytes(p.size)})`).join(", "),
        ". Choose the same file to resume where it stopped."));
    }
  }
  return () => {
    mounted = false;
  };
}
