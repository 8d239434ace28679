// The single page: a fragment router (#/, #/upload, #/watch/<id>, #/dashboard), the header's
// wallet controls and the notice line. Each page module exports mount(main, params) -> cleanup.
import { session } from "./api.js";
import { el, shortAddress } from "./format.js";
import { NoWallet, signIn, signOut } from "./wallet.js";

const PAGES = {
  library: () => import("./library.js"),
  upload: () => import("./upload.js"),
  watch: () => import("./player.js"),
  dashboard: () => import("./dashboard.js"),
};

let cleanup = null;
let noticeTimer = null;

export function notify(text, kind = "info") {
  const notice = document.getElementById("notice");
  notice.textContent = text;
  notice.dataset.kind = kind;
  notice.hidden = !text;
  clearTimeout(noticeTimer);
  if (text && kind !== "error") noticeTimer = setTimeout(() => (notice.hidden = true), 6000);
}

export async function walletSignIn() {
  try {
    const answer = await signIn();
    notify(`Signed in as ${answer.address}`);
    return answer;
  } catch (error) {
    notify(error instanceof NoWallet ? error.message : `Sign-in failed: ${error.message}`, "error");
    return null;
  }
}

function renderWallet() {
  const box = document.getElementById("wallet");
  const current = session();
  box.replaceChildren();
  if (current) {
    box.append(
      el("span", { class: "address", title: current.address, "data-testid": "address" },
        el("span", { class: "dot", "aria-hidden": "true" }), shortAddress(current.address)),
      el("button", { type: "button", class: "ghost", onclick: () => { signOut(); notify("Signed out"); } }, "Sign out"),
    );
  } else {
    box.append(el("button", { type: "button", id: "sign-in", onclick: walletSignIn }, "Sign in with wallet"));
  }
}

function parseRoute() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = hash.split("?");
  const parts = path.split("/").filter(Boolean);
  const params = Object.fromEntries(new URLSearchParams(query));
  if (parts[0] === "watch" && parts[1]) return { page: "watch", params: { ...params, id: parts[1] } };
  if (parts[0] === "upload") return { page: "upload", params };
  if (parts[0] === "dashboard") return { page: "dashboard", params };
  return { page: "library", params };
}

async function route() {
  const { page, params } = parseRoute();
  if (cleanup) {
    cleanup();
    cleanup = null;
  }
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const main = document.getElementById("main");
  main.replaceChildren();
  main.dataset.page = page;
  const module = await PAGES[page]();
  cleanup = (await module.mount(main, params)) || null;
}

window.addEventListener("hashchange", route);
window.addEventListener("sg-session", () => {
  renderWallet();
  route();
});
// Another tab signed in or out.
window.addEventListener("storage", (event) => {
  if (event.key === "streamgate.session") window.dispatchEvent(new CustomEvent("sg-session"));
});
renderWallet();
route();
