// The edge's JSON API with the signed-in wallet's bearer token, and the session it keeps.
const SESSION_KEY = "streamgate.session";

export function session() {
  try {
    const saved = JSON.parse(localStorage.getItem(SESSION_KEY) || "null");
    if (saved && saved.token && new Date(saved.expires_at) > new Date()) return saved;
  } catch {
    // a damaged entry is no session
  }
  return null;
}

export function saveSession(value) {
  localStorage.setItem(SESSION_KEY, JSON.stringify(value));
  window.dispatchEvent(new CustomEvent("sg-session"));
}

export function clearSession() {
  localStorage.removeItem(SESSION_KEY);
  window.dispatchEvent(new CustomEvent("sg-session"));
}

export function authHeaders() {
  const current = session();
  return current ? { Authorization: `Bearer ${current.token}` } : {};
}

export class ApiError extends Error {
  constructor(status, error, detail) {
    super(detail ? `${error}: ${detail}` : error);
    this.status = status;
  }
}

export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json", ...authHeaders() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const answer = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (answer.status === 401 && headers.Authorization) {
    // A token the server no longer takes (expired, new secret): sign out rather than fail forever.
    clearSession();
  }
  if (!answer.ok) {
    let error = `HTTP ${answer.status}`;
    let detail = "";
    try {
      const parsed = await answer.json();
      error = parsed.error || error;
      detail = parsed.detail || "";
    } catch {
      // not JSON: keep the status
    }
    throw new ApiError(answer.status, error, detail);
  }
  return answer.status === 204 ? null : answer.json();
}
