// Library: newest first, paged; "My videos" (signed in) adds the wallet's private ones, marked.
import { api, session } from "./api.js";
import { STATUS_TEXT, ago, duration, el, eta, percent } from "./format.js";

const PAGE = 24;
const REFRESH_MS = 3000;

// A private video's poster is private media too: it loads through a signed URL (kept a while).
const signedRoots = new Map();

async function signedRoot(id) {
  const cached = signedRoots.get(id);
  if (cached && cached.until > Date.now()) return cached.root;
  const signed = await api(`/api/v1/videos/${id}/playback-url`, { method: "POST" });
  const root = signed.hls_url.replace(/\/master\.m3u8$/, "");
  signedRoots.set(id, { root, until: new Date(signed.expires_at).getTime() - 60_000 });
  return root;
}

function card(video) {
  const thumb = el("div", { class: "thumb" });
  if (video.poster_url && video.visibility === "private") {
    const img = el("img", { alt: "", loading: "lazy" });
    thumb.append(img);
    signedRoot(video.id).then((root) => { img.src = `${root}/poster.jpg`; }, () => img.remove());
  } else if (video.poster_url) thumb.append(el("img", { src: video.poster_url, alt: "", loading: "lazy" }));
  else thumb.append(el("span", { text: STATUS_TEXT[video.status] || video.status }));
  if (video.duration) thumb.append(el("span", { class: "length", text: duration(video.duration) }));
  const body = el("div", { class: "body" },
    el("div", { class: "title", title: video.title || video.filename, text: video.title || video.filename || video.id }),
    el("div", { class: "meta" },
      el("span", { class: `badge ${video.status}`, text: STATUS_TEXT[video.status] || video.status }),
      video.visibility === "private" ? el("span", { class: "badge private", text: "Private" }) : null,
      el("span", { text: ago(video.created_at) })));
  if (video.status === "transcoding" || video.status === "queued") {
    const bar = el("span");
    bar.style.width = percent(video.progress);
    body.append(el("div", { class: "progress", role: "progressbar", "aria-label": "Transcode progress",
      "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": String(Math.floor(video.progress * 100)) }, bar),
    el("div", { class: "meta", text: video.status === "queued" ? "Waiting for a worker" :
      `${percent(video.progress)} · ${eta(video.eta_s)}` }));
  }
  if (video.status === "failed" && video.error) body.append(el("div", { class: "meta", text: video.error }));
  return el("a", { class: "card", href: `#/watch/${video.id}`, "data-video": video.id, "data-status": video.status }, thumb, body);
}

export async function mount(main, params) {
  const signedIn = Boolean(session());
  const mine = signedIn && params.mine === "1";
  let offset = Math.max(0, parseInt(params.offset || "0", 10) || 0);
  const scope = el("select", { id: "scope", "aria-label": "Which videos" },
    el("option", { value: "all", text: "Public videos" }),
    el("option", { value: "mine", text: "My videos (private included)", disabled: !signedIn }));
  scope.value = mine ? "mine" : "all";
  scope.addEventListener("change", () => { location.hash = scope.value === "mine" ? "#/?mine=1" : "#/"; });
  const grid = el("div", { class: "grid", id: "videos", "aria-live": "polite" });
  const pager = el("div", { class: "pager" });
  main.append(el("div", { class: "toolbar" }, el("h1", { text: mine ? "My videos" : "Library" }),
    el("div", { class: "row" }, el("label", { for: "scope", class: "hide-narrow", text: "Show" }), scope,
      el("a", { class: "button", href: "#/upload" }, "Upload"))), grid, pager);

  let timer = null;
  let stopped = false;
  async function load() {
    clearTimeout(timer);
    let page;
    try {
      page = await api(`/api/v1/videos?limit=${PAGE}&offset=${offset}${mine ? "&mine=1" : ""}`);
    } catch (error) {
      grid.replaceChildren(el("div", { class: "empty", text: `Could not load the library: ${error.message}` }));
      timer = setTimeout(load, REFRESH_MS * 2);
      return;
    }
    if (stopped) return;
    grid.replaceChildren(...page.videos.map(card));
    if (!page.videos.length) {
      grid.replaceChildren(el("div", { class: "empty" }, mine ? "You have no videos yet. " : "No videos yet. ",
        el("a", { href: "#/upload" }, "Upload the first one")));
    }
    const pages = Math.max(1, Math.ceil(page.total / PAGE));
    const current = Math.floor(offset / PAGE) + 1;
    const go = (to) => {
      location.hash = `#/?offset=${to}${mine ? "&mine=1" : ""}`;
    };
    pager.replaceChildren();
    if (pages > 1) {
      pager.append(
        el("button", { type: "button", class: "ghost", disabled: offset === 0, onclick: () => go(Math.max(0, offset - PAGE)) }, "← Newer"),
        el("span", { class: "muted", text: `Page ${current} of ${pages} · ${page.total} videos` }),
        el("button", { type: "button", class: "ghost", disabled: !page.next, onclick: () => go(offset + PAGE) }, "Older →"));
    }
    // Live while anything on the page still changes; otherwise look for new uploads now and then.
    const busy = page.videos.some((v) => v.status !== "ready" && v.status !== "failed");
    timer = setTimeout(load, busy ? REFRESH_MS : REFRESH_MS * 5);
  }
  await load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
