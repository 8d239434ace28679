// Sign-In with Ethereum (EIP-4361) through the browser wallet (EIP-1193 window.ethereum):
// eth_requestAccounts, then personal_sign of a message holding the edge's single-use nonce.
import { api, clearSession, saveSession } from "./api.js";
import { toChecksumAddress } from "./keccak.js";

export class NoWallet extends Error {
  constructor() {
    super("No Ethereum wallet found in this browser. Install a wallet extension (MetaMask, Rabby, " +
      "Coinbase Wallet...) or open this page in a wallet's browser, then sign in again.");
  }
}

export function siweMessage({ domain, address, uri, chainId, nonce, issuedAt }) {
  return `${domain} wants you to sign in with your Ethereum account:\n${address}\n\n` +
    "Sign in to StreamGate to upload and manage your videos.\n\n" +
    `URI: ${uri}\nVersion: 1\nChain ID: ${chainId}\nNonce: ${nonce}\nIssued At: ${issuedAt}`;
}

export async function signIn() {
  const provider = window.ethereum;
  if (!provider || typeof provider.request !== "function") throw new NoWallet();
  const accounts = await provider.request({ method: "eth_requestAccounts" });
  if (!accounts || !accounts.length) throw new Error("The wallet shared no account.");
  const address = toChecksumAddress(accounts[0]);
  let chainId = 1;
  try {
    chainId = parseInt(await provider.request({ method: "eth_chainId" }), 16) || 1;
  } catch {
    // a wallet that does not say is taken to be on mainnet
  }
  const { nonce } = await api("/api/v1/auth/nonce");
  const message = siweMessage({
    domain: location.host, address, uri: location.origin, chainId, nonce,
    issuedAt: new Date().toISOString(),
  });
  // personal_sign takes the message as hex of its UTF-8 bytes, then the address (EIP-1193 order).
  const hex = "0x" + Array.from(new TextEncoder().encode(message), (b) => b.toString(16).padStart(2, "0")).join("");
  const signature = await provider.request({ method: "personal_sign", params: [hex, address] });
  const answer = await api("/api/v1/auth/verify", { method: "POST", body: { message, signature } });
  saveSession(answer);
  return answer;
}

export function signOut() {
  clearSession();
}
