// The demo inbox page: the user's inbox (ListInbox, paged), an unread badge, live toasts,
// mark read, and the connection state, on the client in ../src.
//
// Auth, for the demo: the page takes a user JWT from its URL fragment (`#token=...`, which the
// browser never sends to any server, so no proxy can log it) or from the sign-in form, keeps it
// in sessionStorage (this tab only) and removes it from the address bar. A real app gets its
// token from its own backend (see docs/web.md). Fragment parameters:
//   token=JWT           the user's token (scope subscribe)
//   server=URL          Envoy's gRPC-Web listener (default VITE_HERALD_URL, else host:8080)
//   ackIntervalMs=N     the subscription's ack cadence (tests use it)
//   transport=websocket subscribe over Herald's WebSocket endpoint (Envoy's /ws) instead of
//                       gRPC-Web; the inbox calls stay gRPC-Web
//   frames=json         with transport=websocket: JSON text frames (herald.v1.json) instead of
//                       binary protobuf
//   verify=1            ask for gzip + signed deliveries and verify every one (Ed25519,
//                       WebCrypto), on the stream and on ListInbox alike; rejected ones are
//                       listed as rejected, never shown as notifications
//   keys=URL            where the verification keys come from: a /signing-keys JSON URL
//                       (default: GetSigningKeys through Envoy)

import {
  ChainDecoder,
  type ConnectionState,
  type DeliveryRejected,
  fetchSigningKeysHttp,
  type Inbox,
  SigningKeys,
  createHeraldClient,
  type InboxItem,
  LocalStorageResumeStore,
  type Notification,
  readClaims,
  resumeKey,
  type Subscription,
} from "../src/index";

interface Session {
  token: string;
  server: string;
  ackIntervalMs?: number;
  transport?: "websocket";
  frames?: "json";
  verify?: boolean;
  keys?: string;
}

const SESSION_KEY = "herald.demo.session";
const TOAST_MS = 8_000;

function defaultServer(): string {
  return import.meta.env.VITE_HERALD_URL ?? `${location.protocol}//${location.hostname}:8080`;
}

function readSession(): Session | undefined {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get("token");
  if (token !== null) {
    const ack = Number(fragment.get("ackIntervalMs"));
    const session: Session = {
      token,
      server: fragment.get("server") ?? defaultServer(),
      ...(ack > 0 ? { ackIntervalMs: ack } : {}),
      ...(fragment.get("transport") === "websocket" ? { transport: "websocket" as const } : {}),
      ...(fragment.get("frames") === "json" ? { frames: "json" as const } : {}),
      ...(fragment.get("verify") === "1" ? { verify: true } : {}),
      ...(fragment.get("keys") ? { keys: fragment.get("keys") ?? "" } : {}),
    };
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
    // Out of the address bar, the history and any bookmark.
    history.replaceState(null, "", location.pathname + location.search);
    return session;
  }
  const stored = sessionStorage.getItem(SESSION_KEY);
  return stored === null ? undefined : (JSON.parse(stored) as Session);
}

function element<T extends HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (found === null) throw new Error(`#${id} is missing from the page`);
  return found as T;
}

function when(notification: Notification | undefined): string {
  const seconds = notification?.createdAt?.seconds;
  return seconds === undefined ? "" : new Date(Number(seconds) * 1000).toLocaleString();
}

function describe(state: ConnectionState): string {
  switch (state.kind) {
    case "connecting":
      return state.attempt > 1 ? `connecting (attempt ${state.attempt})` : "connecting";
    case "open":
      return "live";
    case "reconnecting":
      return `reconnecting in ${(state.delayMs / 1000).toFixed(1)} s (${state.reason})`;
    case "closed":
      return `disconnected: ${state.reason}`;
  }
}

class InboxPage {
  readonly #list = element<HTMLUListElement>("inbox");
  readonly #more = element<HTMLButtonElement>("more");
  readonly #empty = element<HTMLParagraphElement>("empty");
  readonly #badge = element<HTMLSpanElement>("unread");
  readonly #toasts = element<HTMLDivElement>("toasts");
  readonly #connection = element<HTMLSpanElement>("connection");
  readonly #rejections = element<HTMLUListElement>("rejections");
  readonly decoder: ChainDecoder | undefined;
  readonly #client: ReturnType<typeof createHeraldClient>;
  /** The inbox, through the subscription's decoder when the page verifies. */
  readonly inbox: Inbox;
  readonly #unread = new Set<string>();
  #nextPage = "";
  subscription: Subscription | undefined;

  constructor(session: Session) {
    this.#client = createHeraldClient({
      baseUrl: session.server,
      token: session.token,
      ...(session.transport === "websocket" ? { stream: "websocket" as const } : {}),
      ...(session.frames === "json" ? { webSocketFraming: "json" as const } : {}),
    });
    const keysUrl = session.keys;
    this.decoder = session.verify
      ? new ChainDecoder({
          keys: keysUrl ? new SigningKeys(() => fetchSigningKeysHttp(keysUrl)) : this.#client.signingKeys,
        })
      : undefined;
    this.inbox = this.decoder ? this.#client.inbox.withDecoder(this.decoder) : this.#client.inbox;
    element("transport").textContent =
      this.#client.stream +
      (session.transport === "websocket" && session.frames === "json" ? ", json" : "") +
      (this.decoder ? ", verified" : "");
    const claims = readClaims(session.token);
    element("who").textContent = `${claims.sub} @ ${claims.tenant}`;
    this.#more.addEventListener("click", () => void this.loadPage());
    this.subscription = this.#client.subscribe({
      store: new LocalStorageResumeStore(resumeKey(session.server, claims.tenant, claims.sub)),
      ...(session.ackIntervalMs ? { ackIntervalMs: session.ackIntervalMs } : {}),
      ...(this.decoder ? { decoder: this.decoder } : {}),
      onReject: (rejected) => this.rejected(rejected),
      onNotification: ({ notification, log }) => {
        this.toast(notification);
        if (log === "user") this.addLive(notification);
      },
    });
    this.subscription.state.subscribe((state) => {
      this.#connection.dataset.state = state.kind;
      this.#connection.textContent = describe(state);
    });
  }

  async start(): Promise<void> {
    await this.loadPage();
    for (const id of await this.inbox.unreadIds()) this.#unread.add(id);
    this.renderBadge();
    // The first page and the badge are in (tests wait for this before sending).
    document.body.dataset.inbox = "loaded";
  }

  async loadPage(): Promise<void> {
    const page = await this.inbox.page(this.#nextPage, 20);
    for (const item of page.items) {
      // A delivery that arrived live while this page loaded is listed already.
      const id = item.notification?.id ?? "";
      if (this.#list.querySelector(`li[data-id="${CSS.escape(id)}"]`) === null) {
        this.#list.append(this.row(item));
      }
    }
    // Items that did not verify: shown where they are, as rejected, never their content (the
    // id inside a forged item cannot be trusted either: the cursor says which it is).
    for (const { item, rejected } of page.rejected) {
      const cursor = String(item.cursor);
      if (this.#list.querySelector(`li.rejected[data-cursor="${cursor}"]`) === null) {
        this.#list.append(this.rejectedRow(cursor, rejected));
      }
    }
    this.#nextPage = page.nextPageToken;
    this.#more.hidden = this.#nextPage === "";
    this.#empty.hidden = this.#list.children.length > 0;
  }

  row(item: Pick<InboxItem, "notification" | "readAt">): HTMLLIElement {
    const notification = item.notification;
    const id = notification?.id ?? "";
    const read = item.readAt !== undefined;
    const li = document.createElement("li");
    li.dataset.id = id;
    li.className = read ? "read" : "unread";
    const text = document.createElement("div");
    text.className = "text";
    const title = document.createElement("div");
    title.className = "title";
    title.textContent = notification?.content?.title ?? "";
    const body = document.createElement("div");
    body.textContent = notification?.content?.body ?? "";
    text.append(title, body);
    const time = document.createElement("time");
    time.textContent = when(notification);
    li.append(text, time);
    if (!read) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "mark-read";
      button.textContent = "Mark read";
      button.addEventListener("click", () => void this.markRead(id, li, button));
      li.append(button);
    }
    return li;
  }

  rejectedRow(cursor: string, rejected: DeliveryRejected): HTMLLIElement {
    const li = document.createElement("li");
    li.className = "rejected";
    li.dataset.cursor = cursor;
    li.dataset.reason = rejected.reason;
    li.textContent = `Rejected an inbox item: ${rejected.message}`;
    return li;
  }

  addLive(notification: Notification): void {
    if (this.#list.querySelector(`li[data-id="${CSS.escape(notification.id)}"]`) === null) {
      this.#list.prepend(this.row({ notification, readAt: undefined }));
      this.#empty.hidden = true;
    }
    this.#unread.add(notification.id);
    this.renderBadge();
  }

  async markRead(id: string, li: HTMLLIElement, button: HTMLButtonElement): Promise<void> {
    button.disabled = true;
    try {
      await this.inbox.markRead([id]);
      li.className = "read";
      button.remove();
      this.#unread.delete(id);
      this.renderBadge();
    } catch (error) {
      button.disabled = false;
      this.toastText("Could not mark it read", String(error));
    }
  }

  /** A delivery that failed verification: listed as rejected, never shown as a notification. */
  rejected(rejected: DeliveryRejected): void {
    const li = document.createElement("li");
    li.className = "rejected";
    li.dataset.reason = rejected.reason;
    li.textContent = `Rejected a delivery: ${rejected.message}`;
    this.#rejections.append(li);
    this.#rejections.hidden = false;
  }

  renderBadge(): void {
    this.#badge.dataset.count = String(this.#unread.size);
    this.#badge.textContent = String(this.#unread.size);
  }

  toast(notification: Notification): void {
    const toast = this.toastText(notification.content?.title ?? "", notification.content?.body ?? "");
    toast.dataset.id = notification.id;
  }

  toastText(title: string, body: string): HTMLDivElement {
    const toast = document.createElement("div");
    toast.className = "toast";
    const heading = document.createElement("span");
    heading.className = "title";
    heading.textContent = title;
    toast.append(heading, document.createTextNode(body));
    this.#toasts.append(toast);
    setTimeout(() => toast.remove(), TOAST_MS);
    return toast;
  }
}

function signIn(): void {
  const form = element<HTMLFormElement>("sign-in");
  form.hidden = false;
  element("connection").dataset.state = "closed";
  element("connection").textContent = "signed out";
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = element<HTMLInputElement>("token").value.trim();
    sessionStorage.setItem(SESSION_KEY, JSON.stringify({ token, server: defaultServer() }));
    location.reload();
  });
}

declare global {
  interface Window {
    /** The running page, for the browser tests and a developer's console. */
    heraldDemo?: InboxPage;
  }
}

const session = readSession();
if (session === undefined) {
  signIn();
} else {
  const page = new InboxPage(session);
  window.heraldDemo = page;
  page.start().catch((error: unknown) => page.toastText("Could not load the inbox", String(error)));
}
