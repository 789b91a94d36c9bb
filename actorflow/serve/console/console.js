/* The actorflow web console: a client of this service's HTTP API, nothing more.
 *
 * Hand-written, no framework, no build step (see actorflow/serve/console.py). Every figure on
 * screen comes from a /v1 route, read with the bearer token the page asked for once and keeps in
 * sessionStorage; a 401 asks for it again. Data from the service only ever becomes text nodes
 * and attribute values, never markup. The view on screen is read again every REFRESH_MS while
 * the tab is visible and "Live" is checked.
 */
(function () {
  "use strict";

  const ROOT = document.body.dataset.root || "";
  const TOKEN_KEY = "actorflow.console.token";
  const REFRESH_MS = 2000;
  const TYPES_EVERY_MS = 15000;
  const PAGE_SIZE = 50;
  const MAX_WORKFLOWS = 10000; // the most the workflows list loads, a page of the API at a time
  const STATUSES = ["RUNNING", "PENDING", "RESUMABLE", "FAILED", "SUCCESSFUL", "CANCELED"];
  const ENDED = new Set(["SUCCESSFUL", "CANCELED"]);
  const CAN_RESUME = new Set(["RESUMABLE", "FAILED"]);
  const ID_CHARS = /^[A-Za-z0-9._:@-]+$/;
  const SVG_NS = "http://www.w3.org/2000/svg";

  const viewEl = document.getElementById("view");
  const tokenForm = document.getElementById("token-form");
  const tokenProblem = document.getElementById("token-problem");
  const problemEl = document.getElementById("problem");
  const liveBox = document.getElementById("live");
  const updatedEl = document.getElementById("updated");
  const forgetButton = document.getElementById("forget");

  // ---------------------------------------------------------------- DOM helpers

  function setAttrs(el, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
  }

  function fill(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    return fill(el, children);
  }

  function svg(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    setAttrs(el, attrs);
    return fill(el, children);
  }

  function path(...segments) {
    return "/" + segments.map(encodeURIComponent).join("/");
  }

  function hash(...segments) {
    return "#" + path(...segments);
  }

  // ---------------------------------------------------------------- formatting

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  function clock(date) {
    return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
  }

  function dateTime(epoch) {
    const d = new Date(epoch * 1000);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(d)}`;
  }

  function span(seconds) {
    const s = Math.abs(seconds);
    if (s < 0.001) return "<1 ms";
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 10) return `${s.toFixed(1)} s`;
    if (s < 60) return `${Math.round(s)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  function relative(epoch) {
    const delta = epoch - Date.now() / 1000;
    return delta >= 0 ? `in ${span(delta)}` : `${span(delta)} ago`;
  }

  /** A <time> for a Unix time: the local date and time and how far from now ("relative"), the
   * date and time ("plain"), or the time of day with the date in its tooltip ("clock"). */
  function moment(epoch, mode = "relative") {
    if (epoch === null || epoch === undefined) return h("span", { class: "muted" }, "—");
    const iso = new Date(epoch * 1000).toISOString();
    const text = mode === "clock" ? clock(new Date(epoch * 1000)) : dateTime(epoch);
    return h(
      "span",
      { class: "moment" },
      h("time", { datetime: iso, title: `${dateTime(epoch)} (${iso})` }, text),
      mode === "relative" ? h("span", { class: "muted" }, ` (${relative(epoch)})`) : null,
    );
  }

  function took(start, end) {
    return start !== null && start !== undefined && end !== null && end !== undefined
      ? span(end - start)
      : "—";
  }

  function badge(status) {
    return h("span", { class: `badge st-${String(status).toLowerCase()}` }, status);
  }

  function json(value) {
    return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
  }

  function plural(n, one, many) {
    return `${n} ${n === 1 ? one : many}`;
  }

  /** Whether ``data`` differs from what ``view`` last drew (or the relative times it shows,
   * like "in 5 min", are due to be redrawn): a refresh that reads the same leaves the page as it
   * is, so a selection or a tooltip stays. */
  function changed(view, data) {
    const key = `${JSON.stringify(data)}@${Math.floor(Date.now() / 15000)}`;
    if (key === view.drawn) return false;
    view.drawn = key;
    return true;
  }

  // ---------------------------------------------------------------- the API

  class ApiError extends Error {
    constructor(status, body) {
      const message = (body && (body.message || body.error)) || `HTTP ${status}`;
      super(status ? `${message} (HTTP ${status})` : message);
      this.status = status;
      this.code = body && body.error;
    }
  }

  class SignInNeeded extends Error {}

  async function api(route, options = {}) {
    const headers = { accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.authorization = `Bearer ${token}`;
    const init = { method: options.method || "GET", headers, cache: "no-store" };
    if (options.body !== undefined) {
      headers["content-type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    let response;
    try {
      response = await fetch(ROOT + route, init);
    } catch (error) {
      throw new ApiError(0, { message: `the service did not answer: ${error.message}` });
    }
    if (response.status === 401) {
      signIn(token ? "That token was refused." : "");
      throw new SignInNeeded();
    }
    if (response.status === 204) return null;
    const text = await response.text();
    let body;
    try {
      body = text ? JSON.parse(text) : null;
    } catch (error) {
      body = { message: text.slice(0, 200) };
    }
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  // ---------------------------------------------------------------- signing in

  let signingIn = false;

  function signIn(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    forgetButton.hidden = true;
    tokenProblem.textContent = message;
    if (signingIn) return;
    signingIn = true;
    viewEl.hidden = true;
    problemEl.hidden = true;
    tokenForm.hidden = false;
    tokenForm.elements.token.value = "";
    tokenForm.elements.token.focus();
  }

  tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = tokenForm.elements.token.value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    signingIn = false;
    tokenForm.hidden = true;
    viewEl.hidden = false;
    forgetButton.hidden = false;
    route();
  });

  forgetButton.addEventListener("click", () => signIn(""));

  // ---------------------------------------------------------------- refreshing

  let current = null;
  let busy = false;

  function showProblem(error) {
    if (!error) {
      problemEl.hidden = true;
      problemEl.textContent = "";
      return;
    }
    problemEl.textContent = `Could not read the service: ${error.message}`;
    problemEl.hidden = false;
  }

  async function refresh() {
    const view = current;
    busy = true;
    try {
      await view.refresh();
      if (view === current) {
        showProblem(null);
        updatedEl.textContent = `Updated ${clock(new Date())}`;
      }
    } catch (error) {
      if (!(error instanceof SignInNeeded) && view === current) showProblem(error);
    } finally {
      busy = false;
    }
  }

  function tick() {
    if (!liveBox.checked || document.hidden || signingIn || busy || !current || current.paused) return;
    refresh();
  }

  setInterval(tick, REFRESH_MS);
  document.addEventListener("visibilitychange", tick);
  liveBox.addEventListener("change", tick);

  // ---------------------------------------------------------------- routing

  function parseHash() {
    const raw = location.hash.replace(/^#\/?/, "");
    const [where, query = ""] = raw.split("?");
    let parts;
    try {
      parts = where.split("/").filter(Boolean).map(decodeURIComponent);
    } catch (error) {
      parts = [];
    }
    return { parts, params: new URLSearchParams(query) };
  }

  function viewFor({ parts, params }) {
    const [section, first, second] = parts;
    if (section === "workflows") {
      return first ? new WorkflowView(first) : new WorkflowsView(params.get("status") || "");
    }
    if (section === "actors" && first && second) return new ActorView(first, second);
    return new ActorsView(section === "actors" ? first || "" : "");
  }

  function route() {
    if (signingIn) return;
    current = viewFor(parseHash());
    document.title = `${current.title()} · actorflow console`;
    for (const link of document.querySelectorAll("nav a[data-section]")) {
      const here = link.dataset.section === current.section;
      if (here) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    showProblem(null);
    current.mount(viewEl);
    refresh();
  }

  window.addEventListener("hashchange", route);

  function breadcrumb(...items) {
    return h(
      "nav",
      { class: "crumbs", "aria-label": "Breadcrumb" },
      h(
        "ol",
        {},
        items.map(([label, href]) =>
          h("li", {}, href ? h("a", { href }, label) : h("span", { "aria-current": "page" }, label)),
        ),
      ),
    );
  }

  function section(title, body, attrs = {}) {
    const id = `h-${Math.random().toString(36).slice(2, 9)}`;
    return h("section", { class: "card", "aria-labelledby": id, ...attrs }, h("h2", { id }, title), body);
  }

  function table(caption, headings, rows, empty) {
    if (!rows.length) return h("p", { class: "muted empty" }, empty);
    return h(
      "div",
      { class: "table-wrap" }, // a table too wide for its card scrolls there, not the page
      h(
        "table",
        {},
        caption ? h("caption", { class: "visually-hidden" }, caption) : null,
        h("thead", {}, h("tr", {}, headings.map((text) => h("th", { scope: "col" }, text)))),
        h("tbody", {}, rows),
      ),
    );
  }

  function facts(pairs) {
    return h(
      "dl",
      { class: "facts" },
      pairs.map(([term, value]) => h("div", {}, h("dt", {}, term), h("dd", {}, value))),
    );
  }

  // ---------------------------------------------------------------- bulk actions

  const BULK_COUNT_LIMIT = 1000; // ids looked at by each request of a dry run
  const BULK_BATCH = 100; // and by each request of the real run

  function capital(text) {
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  /** The bulk actions of a list (``POST /v1/bulk/...``), on the ids starting with a prefix.
   * Each is a dry run over every page (``next`` sent back as ``start_after`` until it is null)
   * that counts, a confirmation on the page with that count, the real run in batches of
   * BULK_BATCH with its progress, then a summary. ``actions``: ``{id, label, danger, route,
   * filters(prefix)`` (the body's filters; throws when they would select everything)
   * ``, phrase(n, filters)`` ("3 running workflows whose ids start with “a-”")
   * ``, verb, done, skippedWhy}``. Leaving the page stops a run after the batch in flight. */
  class BulkPanel {
    constructor(view, { title, scope, placeholder, actions }) {
      this.view = view;
      this.title = title;
      this.scope = scope;
      this.placeholder = placeholder;
      this.actions = actions;
      this.working = false;
    }

    element() {
      this.input = h("input", {
        id: "bulk-prefix",
        type: "search",
        name: "bulk-prefix",
        placeholder: this.placeholder,
        autocomplete: "off",
        spellcheck: "false",
      });
      this.buttons = this.actions.map((action) =>
        h(
          "button",
          {
            type: "button",
            id: action.id,
            class: action.danger ? "danger" : null,
            onclick: () => this.count(action),
          },
          action.label,
        ),
      );
      this.problem = h("p", { class: "problem banner", role: "alert", hidden: true });
      this.out = h("div", { class: "bulk-out", role: "status", "aria-live": "polite" });
      const form = h(
        "form",
        { class: "search bulk-form", onsubmit: (event) => event.preventDefault() },
        h("label", { for: "bulk-prefix" }, "Ids starting with"),
        this.input,
        this.buttons,
      );
      return section(
        this.title,
        [h("p", { class: "muted bulk-scope" }, this.scope), form, this.problem, this.out],
        { class: "card bulk-card", id: "bulk" },
      );
    }

    here() {
      return current === this.view && !signingIn;
    }

    hold(working) {
      this.working = working;
      this.input.disabled = working;
      for (const button of this.buttons) button.disabled = working;
    }

    fail(error) {
      this.problem.textContent = error ? error.message : "";
      this.problem.hidden = !error;
    }

    say(text, attrs = {}) {
      const line = h("p", { class: "bulk-line", ...attrs }, text);
      this.out.replaceChildren(line);
      return line;
    }

    /** Every page of ``action`` with ``filters``, summed; ``onPage(sum)`` after each. */
    async pages(action, filters, dryRun, limit, onPage) {
      const sum = { scanned: 0, matched: 0, affected: 0, skipped: 0, complete: false };
      let start = null;
      for (;;) {
        const body = { ...filters, dry_run: dryRun, limit };
        if (start !== null) body.start_after = start;
        const page = await api(action.route, { method: "POST", body });
        for (const key of ["scanned", "matched", "affected", "skipped"]) sum[key] += page[key] || 0;
        onPage(sum);
        if (page.next === null || page.next === undefined || page.next === start) break;
        if (!this.here()) return sum; // left the page: no more batches
        start = page.next;
      }
      sum.complete = true;
      return sum;
    }

    async count(action) {
      if (this.working) return;
      this.fail(null);
      const prefix = this.input.value.trim();
      let filters;
      try {
        if (prefix && !ID_CHARS.test(prefix)) throw new Error("ids hold only letters, digits and . _ : @ -");
        filters = action.filters(prefix);
      } catch (error) {
        this.out.replaceChildren();
        this.fail(error);
        return;
      }
      this.hold(true);
      const counting = "Counting (a dry run, nothing changes)…";
      const line = this.say(counting);
      try {
        const sum = await this.pages(action, filters, true, BULK_COUNT_LIMIT, (s) => {
          line.textContent = `${counting} ${s.scanned.toLocaleString()} looked at`;
        });
        if (!this.here() || !sum.complete) return;
        this.confirm(action, filters, sum);
      } catch (error) {
        this.out.replaceChildren();
        this.stopped(error, "Could not count them");
      }
    }

    confirm(action, filters, sum) {
      const n = sum.affected;
      const skipped = sum.skipped ? ` (${sum.skipped.toLocaleString()} skipped: ${action.skippedWhy})` : "";
      if (n === 0) {
        const none = action.phrase(2, filters).replace(/^\S+ /, ""); // "2 x" without its count
        this.say(`Nothing to ${action.verb}: no ${none}${skipped}.`, { id: "bulk-summary" });
        this.hold(false);
        return;
      }
      const keep = h("button", { type: "button", class: "quiet", id: "bulk-keep" }, "Keep them");
      const yes = h(
        "button",
        { type: "button", class: "danger", id: "bulk-confirm" },
        `Yes, ${action.verb} ${n.toLocaleString()}`,
      );
      keep.addEventListener("click", () => {
        this.say("Nothing was changed.");
        this.hold(false);
        this.input.focus();
      });
      yes.addEventListener("click", () => this.run(action, filters, n));
      this.out.replaceChildren(
        h(
          "div",
          { class: "confirm", role: "group", "aria-label": `Confirm: ${action.label}`, "data-count": n },
          h("span", { id: "bulk-count" }, `${action.phrase(n, filters)}: ${action.verb} them?${skipped}`),
          yes,
          keep,
        ),
      );
      yes.focus();
    }

    async run(action, filters, total) {
      const Done = capital(action.done);
      const line = this.say(`${Done} 0 of ${total.toLocaleString()}…`, { id: "bulk-progress" });
      let done = 0;
      try {
        const sum = await this.pages(action, filters, false, BULK_BATCH, (s) => {
          done = s.affected;
          const of = Math.max(total, done).toLocaleString();
          line.textContent = `${Done} ${done.toLocaleString()} of ${of}…`;
        });
        const skipped = sum.skipped ? `; ${sum.skipped.toLocaleString()} skipped (${action.skippedWhy})` : "";
        const end = sum.complete ? "." : ", then stopped: the page was left.";
        const text = `${Done} ${action.phrase(sum.affected, filters)}${skipped}${end}`;
        this.say(text, { id: "bulk-summary" });
        this.hold(false);
        if (this.view.afterBulk) this.view.afterBulk();
        if (this.here()) await refresh();
      } catch (error) {
        line.textContent = `${Done} ${done.toLocaleString()} of ${total.toLocaleString()}, then stopped.`;
        this.stopped(error, "Stopped before the end");
      }
    }

    stopped(error, what) {
      this.hold(false);
      if (error instanceof SignInNeeded) return;
      this.fail(new Error(`${what}: ${error.message}`));
    }
  }

  // ---------------------------------------------------------------- actors: types and ids

  class ActorsView {
    constructor(type) {
      this.section = "actors";
      this.type = type;
      this.prefix = "";
      this.starts = [null]; // start_after of each page seen
      this.page = 0;
      this.next = null;
    }

    title() {
      return this.type ? `${this.type} actors` : "Actors";
    }

    mount(el) {
      this.typesBody = h("div", { class: "types" });
      this.idsBody = h("div", { class: "ids-body" });
      const idsTitle = this.type ? ["Actors of type ", h("code", {}, this.type)] : "Actors";
      let idsPart = h("p", { class: "muted empty" }, "Choose a type to list its actors.");
      if (this.type) {
        this.searchInput = h("input", {
          id: "id-prefix",
          type: "search",
          name: "prefix",
          placeholder: "e.g. order-",
          autocomplete: "off",
          spellcheck: "false",
        });
        const form = h(
          "form",
          { class: "search", role: "search", onsubmit: (event) => this.search(event) },
          h("label", { for: "id-prefix" }, "Ids starting with"),
          this.searchInput,
          h("button", { type: "submit" }, "Search"),
          h("button", { type: "button", class: "quiet", onclick: () => this.clear() }, "Clear"),
        );
        this.prevButton = h("button", { type: "button", onclick: () => this.turn(-1) }, "‹ Previous");
        this.nextButton = h("button", { type: "button", onclick: () => this.turn(1) }, "Next ›");
        this.pageLabel = h("span", { class: "muted", "aria-live": "polite" });
        const pager = h("div", { class: "pager" }, this.prevButton, this.pageLabel, this.nextButton);
        idsPart = [form, this.idsBody, pager];
        this.bulk = new BulkPanel(this, ActorsView.bulkActions(this.type));
      }
      el.replaceChildren(
        h("h1", {}, "Actors"),
        h(
          "div",
          { class: "split" },
          section("Actor types", this.typesBody, { class: "card types-card" }),
          h(
            "div",
            { class: "stack" },
            section(idsTitle, idsPart, { class: "card ids-card" }),
            this.bulk ? this.bulk.element() : null,
          ),
        ),
      );
    }

    afterBulk() {
      this.typesAt = 0; // the counts are read again at once, not in up to TYPES_EVERY_MS
    }

    static bulkActions(type) {
      const filters = (prefix) => {
        if (!prefix) throw new Error("Give the prefix of the ids: a bulk action never takes them all.");
        return { prefix };
      };
      const ids = (f) => `whose ids start with “${f.prefix}”`;
      return {
        title: "Bulk actions",
        scope:
          `On the ${type} actors whose ids start with the prefix. A dry run counts them first; nothing ` +
          "changes before you confirm. Purging drops the records of failed timer ticks; the timers stay.",
        placeholder: "e.g. order-",
        actions: [
          {
            id: "bulk-delete",
            label: "Delete ids with prefix…",
            danger: true,
            route: path("v1", "bulk", "actors", type, "delete"),
            filters,
            phrase: (n, f) => `${plural(n, `${type} actor`, `${type} actors`)} ${ids(f)}`,
            verb: "delete",
            done: "deleted",
            skippedWhy: "gone meanwhile",
          },
          {
            id: "bulk-purge",
            label: "Purge failed timers…",
            route: path("v1", "bulk", "actors", type, "purge-failed-timers"),
            filters,
            phrase: (n, f) =>
              `${plural(n, "failed timer tick", "failed timer ticks")} of the ${type} actors ${ids(f)}`,
            verb: "purge",
            done: "purged",
            skippedWhy: "gone meanwhile",
          },
        ],
      };
    }

    search(event) {
      event.preventDefault();
      const prefix = this.searchInput.value.trim();
      if (prefix && !ID_CHARS.test(prefix)) {
        showProblem(new Error("ids hold only letters, digits and . _ : @ -"));
        return;
      }
      this.prefix = prefix;
      this.starts = [null];
      this.page = 0;
      refresh();
    }

    clear() {
      this.searchInput.value = "";
      this.search(new Event("submit"));
    }

    turn(step) {
      if (step > 0 && this.next === null) return;
      if (step > 0) this.starts[this.page + 1] = this.next;
      this.page = Math.max(0, this.page + step);
      refresh();
    }

    /** The start_after that lists exactly the ids >= prefix: the prefix with its last
     * character lowered by one, then "~" (above every character an id may hold). */
    static below(prefix) {
      const last = prefix.charCodeAt(prefix.length - 1);
      return `${prefix.slice(0, -1)}${String.fromCharCode(last - 1)}~`;
    }

    async refresh() {
      // The counts cost a listing per type: read again every TYPES_EVERY_MS, not at every tick.
      const due = !this.typesAt || Date.now() - this.typesAt >= TYPES_EVERY_MS;
      const [listing, ids] = await Promise.all([
        due ? api("/v1/actors") : null,
        this.type ? this.loadIds() : null,
      ]);
      if (listing) {
        this.typesAt = Date.now();
        this.renderTypes(listing.types);
      }
      if (ids) this.renderIds(ids);
    }

    async loadIds() {
      let start = this.starts[this.page];
      if (start === null && this.prefix) start = ActorsView.below(this.prefix);
      const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
      if (start !== null) query.set("start_after", start);
      const page = await api(`${path("v1", "actors", this.type)}?${query}`);
      const ids = this.prefix ? page.ids.filter((id) => id.startsWith(this.prefix)) : page.ids;
      this.next = ids.length === page.ids.length ? page.next : null;
      return ids;
    }

    renderTypes(types) {
      const rows = types.map((t) =>
        h(
          "tr",
          { class: t.type === this.type ? "selected" : null },
          h(
            "th",
            { scope: "row" },
            h(
              "a",
              { href: hash("actors", t.type), "aria-current": t.type === this.type ? "page" : null },
              t.type,
            ),
          ),
          h("td", { class: "num" }, t.more ? `${t.count.toLocaleString()}+` : t.count.toLocaleString()),
        ),
      );
      this.typesBody.replaceChildren(
        table(
          "Actor types and how many actors each has",
          ["Type", "Actors"],
          rows,
          "No actor types are registered.",
        ),
      );
    }

    renderIds(ids) {
      const empty = this.prefix ? `No ids start with “${this.prefix}”.` : "No actors of this type yet.";
      this.idsBody.replaceChildren(
        ids.length
          ? h(
              "ul",
              { class: "ids" },
              ids.map((id) => h("li", {}, h("a", { href: hash("actors", this.type, id) }, id))),
            )
          : h("p", { class: "muted empty" }, empty),
      );
      this.prevButton.disabled = this.page === 0;
      this.nextButton.disabled = this.next === null;
      this.pageLabel.textContent = `Page ${this.page + 1} · ${plural(ids.length, "actor", "actors")}`;
    }
  }

  // ---------------------------------------------------------------- one actor

  function repeats(timer) {
    const s = timer.schedule;
    if (!s) return "once";
    const seconds = /^[\d.]+$/.test(s.every) ? " s" : ""; // a period in seconds, or ISO text
    let text = s.cron ? `cron ${s.cron}${s.tz ? ` (${s.tz})` : ""}` : `every ${s.every}${seconds}`;
    if (s.count !== undefined) text += `, ${s.count} times`;
    return text;
  }

  class ActorView {
    constructor(type, id) {
      this.section = "actors";
      this.type = type;
      this.id = id;
    }

    title() {
      return `${this.type} ${this.id}`;
    }

    mount(el) {
      this.body = h("div", { class: "actor-body" }, h("p", { class: "muted" }, "Loading…"));
      el.replaceChildren(
        breadcrumb(["Actors", "#/actors"], [this.type, hash("actors", this.type)], [this.id, null]),
        h("h1", {}, h("span", { class: "muted" }, `${this.type} `), h("code", {}, this.id)),
        this.body,
      );
    }

    async refresh() {
      const actor = await api(path("v1", "actors", this.type, this.id));
      if (!changed(this, actor)) return;
      this.body.replaceChildren(
        facts([
          ["Version", h("span", { id: "actor-version" }, String(actor.version))],
          ["Schema", String(actor.schema)],
          ["Encoding", actor.encoding],
          ["Created", moment(actor.created_at)],
          ["Last commit", moment(actor.updated_at)],
        ]),
        h(
          "div",
          { class: "split wide-right" },
          section("Committed state", this.state(actor), { class: "card state-card", id: "state" }),
          h(
            "div",
            { class: "stack" },
            section("Timers", this.timers(actor.timers), { class: "card", id: "timers" }),
            section("Pending messages", this.pending(actor.pending_messages), {
              class: "card",
              id: "pending-messages",
            }),
            section("Failed timer ticks", this.failedTimers(actor.failed_timers), {
              class: "card",
              id: "failed-timers",
            }),
            section("Failed messages and events", this.failedDeliveries(actor), {
              class: "card",
              id: "failed-deliveries",
            }),
          ),
        ),
      );
    }

    state(actor) {
      if (actor.encoding !== "json") {
        const why = "Pickled, not shown: this state does not round-trip through JSON.";
        return h("p", { class: "pickled" }, why);
      }
      return json(actor.state);
    }

    timers(timers) {
      const rows = Object.values(timers)
        .sort((a, b) => a.due - b.due)
        .map((t) =>
          h(
            "tr",
            { "data-timer": t.name },
            h("th", { scope: "row" }, h("code", {}, t.name)),
            h("td", {}, h("code", {}, t.method)),
            h(
              "td",
              { class: "due" },
              h("time", { datetime: t.due_at, title: t.due_at }, t.due_at.replace("T", " ")),
              h("br"),
              h("span", { class: "muted" }, relative(t.due)),
            ),
            h("td", {}, repeats(t)),
            h("td", { class: "num" }, t.remaining === null ? "—" : String(t.remaining)),
            h("td", { class: "num" }, String(t.attempts || 0)),
          ),
        );
      return table("Timers", ["Name", "Calls", "Next due", "Repeats", "Left", "Tries"], rows, "No timers.");
    }

    /** The outbox entries not delivered yet: messages this actor sent, events posted to it. */
    pending(entries) {
      const list = entries || [];
      const rows = list.map((p) =>
        h(
          "tr",
          { "data-message": p.message_id },
          h("td", {}, p.kind),
          h("td", {}, h("code", {}, p.to)),
          h(
            "td",
            {},
            p.kind === "event"
              ? [h("code", {}, p.event), h("span", { class: "muted" }, " → "), h("code", {}, p.method)]
              : h("code", {}, p.method),
          ),
          // "{type}/{id}/{rest}": the type and id are this actor's, the rest tells them apart
          h("td", {}, h("code", { title: p.message_id }, String(p.message_id).split("/").slice(2).join("/"))),
        ),
      );
      const shown = table("Pending messages", ["Kind", "To", "Method or event", "Id"], rows, "None.");
      if (list.length < 100) return shown;
      return [shown, h("p", { class: "muted more" }, "The first 100 are shown.")];
    }

    failedTimers(failed) {
      const rows = Object.entries(failed || {}).map(([name, f]) =>
        h(
          "tr",
          {},
          h("th", { scope: "row" }, h("code", {}, name)),
          h("td", {}, moment(f.due, "plain")),
          h("td", { class: "num" }, String(f.attempts)),
          h("td", { class: "error-text" }, f.error),
          h("td", {}, moment(f.at)),
        ),
      );
      return table("Failed timer ticks", ["Timer", "Tick", "Tries", "Error", "Gave up"], rows, "None.");
    }

    failedDeliveries(actor) {
      const all = [...(actor.failed_messages || []), ...(actor.failed_events || [])];
      all.sort((a, b) => b.at - a.at);
      const rows = all.map((f) =>
        h(
          "tr",
          {},
          h("td", {}, f.kind),
          h("td", {}, h("code", {}, f.kind === "event" ? f.event : f.method)),
          h("td", {}, h("code", {}, f.kind === "event" ? f.event_id || "—" : f.sender)),
          h("td", { class: "error-text" }, f.error),
          h("td", {}, moment(f.at)),
        ),
      );
      return table(
        "Failed messages and events",
        ["Kind", "Method or event", "From or id", "Error", "When"],
        rows,
        "None: every message and event sent here was handled.",
      );
    }
  }

  // ---------------------------------------------------------------- workflows

  class WorkflowsView {
    constructor(status) {
      this.section = "workflows";
      this.status = STATUSES.includes(status) ? status : "";
      this.filter = "";
      this.page = 0;
    }

    title() {
      return this.status ? `${this.status} workflows` : "Workflows";
    }

    mount(el) {
      const choices = [["All", ""], ...STATUSES.map((s) => [s.charAt(0) + s.slice(1).toLowerCase(), s])];
      const statusNav = h(
        "nav",
        { class: "filters", "aria-label": "Filter by status" },
        h(
          "ul",
          {},
          choices.map(([label, s]) =>
            h(
              "li",
              {},
              h(
                "a",
                {
                  href: s ? `#/workflows?status=${s}` : "#/workflows",
                  "aria-current": s === this.status ? "page" : null,
                  "data-status": s || "ALL",
                },
                label,
              ),
            ),
          ),
        ),
      );
      this.filterInput = h("input", {
        id: "wf-filter",
        type: "search",
        autocomplete: "off",
        spellcheck: "false",
        placeholder: "part of an id",
        oninput: () => {
          this.filter = this.filterInput.value.trim();
          this.page = 0;
          this.render();
        },
      });
      this.body = h("div", { class: "wf-body" });
      this.prevButton = h("button", { type: "button", onclick: () => this.turn(-1) }, "‹ Previous");
      this.nextButton = h("button", { type: "button", onclick: () => this.turn(1) }, "Next ›");
      this.pageLabel = h("span", { class: "muted", "aria-live": "polite" });
      el.replaceChildren(
        h("h1", {}, "Workflows"),
        statusNav,
        h(
          "section",
          { class: "card", "aria-label": "Workflows" },
          h(
            "div",
            { class: "search", role: "search" },
            h("label", { for: "wf-filter" }, "Ids containing"),
            this.filterInput,
          ),
          this.body,
          h("div", { class: "pager" }, this.prevButton, this.pageLabel, this.nextButton),
        ),
        new BulkPanel(this, this.bulkActions()).element(),
      );
    }

    bulkActions() {
      const status = this.status;
      const filters = (prefix) => {
        if (!prefix && !status) {
          throw new Error(
            "Give an id prefix, or choose a status above: a bulk action never takes every workflow.",
          );
        }
        return { ...(prefix ? { prefix } : {}), ...(status ? { status: [status] } : {}) };
      };
      const phrase = (n, f) => {
        const kind = status ? `${status.toLowerCase()} ` : "";
        const ids = f.prefix ? ` whose ids start with “${f.prefix}”` : "";
        return `${plural(n, `${kind}workflow`, `${kind}workflows`)}${ids}`;
      };
      const scope = status
        ? `On the ${status.toLowerCase()} workflows (the status chosen above) whose ids start with the ` +
          "prefix, if you give one."
        : "On the workflows whose ids start with the prefix (give one, or choose a status above).";
      return {
        title: "Bulk actions",
        scope: `${scope} A dry run counts them first; nothing changes before you confirm.`,
        placeholder: "e.g. order-",
        actions: [
          {
            id: "bulk-cancel",
            label: "Cancel matching…",
            route: "/v1/bulk/workflows/cancel",
            filters,
            phrase,
            verb: "cancel",
            done: "cancelled",
            skippedWhy: "already ended",
          },
          {
            id: "bulk-delete",
            label: "Delete matching…",
            danger: true,
            route: "/v1/bulk/workflows/delete",
            filters,
            phrase,
            verb: "delete",
            done: "deleted",
            skippedWhy: "still running",
          },
        ],
      };
    }

    turn(step) {
      this.page = Math.max(0, this.page + step);
      this.render();
    }

    async refresh() {
      // The API lists a bounded page at a time; follow its pages up to MAX_WORKFLOWS rows.
      const rows = [];
      let after = null;
      do {
        const params = new URLSearchParams();
        if (this.status) params.set("status", this.status);
        if (after != null) params.set("start_after", after);
        const query = params.toString();
        const page = await api(`/v1/workflows${query ? `?${query}` : ""}`);
        rows.push(...page.workflows);
        after = page.next;
      } while (after != null && rows.length < MAX_WORKFLOWS);
      this.rows = rows;
      this.more = after != null;
      this.render();
    }

    render() {
      if (!this.rows) return;
      const shown = this.filter ? this.rows.filter((w) => w.id.includes(this.filter)) : this.rows;
      const pages = Math.max(1, Math.ceil(shown.length / PAGE_SIZE));
      this.page = Math.min(this.page, pages - 1);
      const slice = shown.slice(this.page * PAGE_SIZE, (this.page + 1) * PAGE_SIZE);
      const rows = slice.map((w) =>
        h(
          "tr",
          { "data-workflow": w.id },
          h("th", { scope: "row" }, h("a", { href: hash("workflows", w.id) }, w.id)),
          h("td", {}, badge(w.status)),
        ),
      );
      const what = this.status ? `${this.status.toLowerCase()} workflows` : "workflows";
      this.body.replaceChildren(table("Workflows", ["Workflow", "Status"], rows, `No ${what}.`));
      this.prevButton.disabled = this.page === 0;
      this.nextButton.disabled = this.page >= pages - 1;
      const count =
        plural(shown.length, "workflow", "workflows") + (this.more ? " (the first; filter by status for others)" : "");
      this.pageLabel.textContent = `Page ${this.page + 1} of ${pages} · ${count}`;
    }
  }

  // ---------------------------------------------------------------- one workflow and its graph

  const NODE_W = 210;
  const NODE_H = 62;
  const LANE_H = 12; // the slot an edge takes in a column it passes through
  const GAP_X = 54;
  const GAP_Y = 14;
  const MARGIN = 12;
  const LABEL_CHARS = 26;

  function shorten(text, limit) {
    return text.length > limit ? `${text.slice(0, limit - 1)}…` : text;
  }

  /** Columns of entries, left to right. A planned step sits one column right of the last step
   * it takes from; an edge that spans columns takes a lane (a small slot) in each column it
   * passes, so it never runs behind a step; each column is ordered by where its inputs sit.
   * Steps added as the workflow ran (no recorded edges) come after, in the order they started.
   * Returns ``{columns, routes, firstAdded}``: entries are ``{id, step, ins}`` (``step`` null
   * for a lane), routes ``{from, to, via}`` (the lanes an edge passes). */
  function layout(steps) {
    const column = new Map();
    for (const step of steps) {
      if (!Array.isArray(step.deps)) continue;
      let c = 0;
      for (const dep of step.deps) if (column.has(dep)) c = Math.max(c, column.get(dep) + 1);
      column.set(step.step_id, c);
    }
    const columns = [];
    const entries = new Map();
    const put = (entry, c) => {
      entries.set(entry.id, entry);
      (columns[c] = columns[c] || []).push(entry);
    };
    for (const step of steps) {
      if (column.has(step.step_id)) put({ id: step.step_id, step, ins: [] }, column.get(step.step_id));
    }
    const routes = [];
    for (const step of steps) {
      if (!column.has(step.step_id)) continue;
      for (const dep of step.deps) {
        if (!column.has(dep)) continue;
        let prev = dep;
        const via = [];
        for (let c = column.get(dep) + 1; c < column.get(step.step_id); c++) {
          const lane = { id: `${dep} > ${step.step_id} @${c}`, step: null, ins: [prev] };
          put(lane, c);
          via.push(lane.id);
          prev = lane.id;
        }
        entries.get(step.step_id).ins.push(prev);
        routes.push({ from: dep, to: step.step_id, via });
      }
    }
    const row = new Map();
    for (let c = 0; c < columns.length; c++) {
      const col = columns[c] || [];
      if (c > 0) {
        const weight = (e) => {
          const rows = e.ins.filter((i) => row.has(i)).map((i) => row.get(i));
          return rows.length ? rows.reduce((a, b) => a + b, 0) / rows.length : 0;
        };
        const order = new Map(col.map((e, i) => [e.id, i]));
        col.sort((a, b) => weight(a) - weight(b) || order.get(a.id) - order.get(b.id));
      }
      col.forEach((e, i) => row.set(e.id, i));
      columns[c] = col;
    }
    const added = steps
      .filter((s) => !Array.isArray(s.deps))
      .sort((a, b) => (a.start_time ?? Infinity) - (b.start_time ?? Infinity));
    const perColumn = Math.max(4, ...columns.map((col) => col.filter((e) => e.step).length));
    const firstAdded = columns.length;
    for (let i = 0; i < added.length; i += perColumn) {
      columns.push(added.slice(i, i + perColumn).map((step) => ({ id: step.step_id, step, ins: [] })));
    }
    return { columns, routes, firstAdded };
  }

  function nodeState(step, byId, workflowStatus) {
    if (step.status !== "PENDING") return step.status.toLowerCase();
    const inputsDone = (step.deps || []).every((d) => !byId.has(d) || byId.get(d).status === "SUCCESSFUL");
    return workflowStatus === "RUNNING" && inputsDone ? "ready" : "pending";
  }

  function stepTiming(step) {
    const at = (epoch) => clock(new Date(epoch * 1000));
    if (step.start_time && step.end_time) {
      return `took ${took(step.start_time, step.end_time)} · at ${at(step.start_time)}`;
    }
    if (step.start_time) return `started at ${at(step.start_time)}`;
    return "not started";
  }

  /** Where each entry goes: ``{x, y}`` by id, and the picture's size. */
  function place(columns) {
    const height = (col) =>
      col.reduce((sum, e) => sum + (e.step ? NODE_H : LANE_H), 0) + GAP_Y * Math.max(0, col.length - 1);
    const tallest = Math.max(NODE_H, ...columns.map(height));
    const where = new Map();
    columns.forEach((col, c) => {
      let y = MARGIN + (tallest - height(col)) / 2;
      for (const e of col) {
        where.set(e.id, { x: MARGIN + c * (NODE_W + GAP_X), y });
        y += (e.step ? NODE_H : LANE_H) + GAP_Y;
      }
    });
    const width = MARGIN * 2 + columns.length * NODE_W + Math.max(0, columns.length - 1) * GAP_X;
    return { where, width, height: MARGIN * 2 + tallest };
  }

  function edgePath(route, where) {
    const bend = GAP_X / 2;
    const curve = (x1, y1, x2, y2) => ` C${x1 + bend} ${y1} ${x2 - bend} ${y2} ${x2} ${y2}`;
    const from = where.get(route.from);
    let x = from.x + NODE_W;
    let y = from.y + NODE_H / 2;
    let d = `M${x} ${y}`;
    for (const lane of route.via) {
      const p = where.get(lane);
      d += curve(x, y, p.x, p.y + LANE_H / 2) + ` L${p.x + NODE_W} ${p.y + LANE_H / 2}`;
      x = p.x + NODE_W;
      y = p.y + LANE_H / 2;
    }
    const to = where.get(route.to);
    return d + curve(x, y, to.x - 2, to.y + NODE_H / 2);
  }

  function drawNode(step, at, byId, workflowStatus) {
    const state = nodeState(step, byId, workflowStatus);
    const attempts = step.attempts ? ` · ${plural(step.attempts, "attempt", "attempts")}` : "";
    const statusText = state === "ready" ? "PENDING · ready or running" : `${step.status}${attempts}`;
    const added = !Array.isArray(step.deps);
    const detail = [
      `${step.step_id}${step.name && step.name !== step.step_id ? ` (${step.name})` : ""}: ${statusText}`,
      step.start_time ? `started ${dateTime(step.start_time)}` : "not started",
      step.end_time ? `ended ${dateTime(step.end_time)}` : null,
      added ? "added as the workflow ran" : null,
    ]
      .filter(Boolean)
      .join("\n");
    return svg(
      "g",
      {
        class: `node st-${state}${added ? " added" : ""}`,
        "data-step": step.step_id,
        transform: `translate(${at.x} ${at.y})`,
      },
      svg("title", {}, detail),
      svg("rect", { width: NODE_W, height: NODE_H, rx: 8 }),
      svg("text", { x: 12, y: 20, class: "label" }, shorten(step.step_id, LABEL_CHARS)),
      svg("text", { x: 12, y: 38, class: "status" }, statusText),
      svg("text", { x: 12, y: 54, class: "timing" }, stepTiming(step)),
    );
  }

  function drawGraph(steps, workflowStatus) {
    const byId = new Map(steps.map((s) => [s.step_id, s]));
    const { columns, routes, firstAdded } = layout(steps);
    const { where, width, height } = place(columns);
    const edges = routes.map((route) =>
      svg("path", { class: "edge", d: edgePath(route, where), "marker-end": "url(#arrow)" }),
    );
    const nodes = steps.map((step) => drawNode(step, where.get(step.step_id), byId, workflowStatus));
    const done = steps.filter((s) => s.status === "SUCCESSFUL").length;
    const description =
      `${plural(steps.length, "step", "steps")}, ${done} successful. ` +
      (firstAdded < columns.length ? "The last columns hold steps added as the workflow ran. " : "") +
      "The table below lists every step.";
    const picture = svg(
      "svg",
      {
        viewBox: `0 0 ${width} ${height}`,
        width,
        height,
        role: "img",
        "aria-labelledby": "graph-title graph-desc",
      },
      svg("title", { id: "graph-title" }, "The workflow's step graph"),
      svg("desc", { id: "graph-desc" }, description),
      svg(
        "defs",
        {},
        svg(
          "marker",
          {
            id: "arrow",
            viewBox: "0 0 10 10",
            refX: 9,
            refY: 5,
            markerWidth: 8,
            markerHeight: 8,
            orient: "auto-start-reverse",
          },
          svg("path", { d: "M0 0 L10 5 L0 10 z", class: "arrow" }),
        ),
      ),
      svg("g", { class: "edges" }, edges),
      svg("g", { class: "nodes" }, nodes),
    );
    if (width > 2400) picture.classList.add("wide");
    return picture;
  }

  function legend() {
    const items = [
      ["successful", "successful"],
      ["failed", "failed"],
      ["ready", "pending, inputs ready (may be running)"],
      ["pending", "pending"],
      ["added", "added as it ran (edges not recorded)"],
    ];
    return h(
      "ul",
      { class: "legend", "aria-label": "Legend" },
      items.map(([cls, label]) =>
        h("li", {}, h("span", { class: `swatch st-${cls}`, "aria-hidden": "true" }), label),
      ),
    );
  }

  class WorkflowView {
    constructor(id) {
      this.section = "workflows";
      this.id = id;
      this.paused = false; // while a cancel waits for its confirmation
      this.notice = "";
    }

    title() {
      return `Workflow ${this.id}`;
    }

    mount(el) {
      this.statusEl = h("span", { id: "wf-status" });
      this.actions = h("div", { class: "actions" });
      this.noticeEl = h("p", { class: "notice", role: "status" });
      this.body = h("div", { class: "wf-detail" }, h("p", { class: "muted" }, "Loading…"));
      el.replaceChildren(
        breadcrumb(["Workflows", "#/workflows"], [this.id, null]),
        h(
          "div",
          { class: "title-row" },
          h("h1", {}, h("code", {}, this.id), " ", this.statusEl),
          this.actions,
        ),
        this.noticeEl,
        this.body,
      );
    }

    async refresh() {
      const wf = await api(path("v1", "workflows", this.id));
      this.wf = wf;
      if (!changed(this, wf)) return;
      this.statusEl.replaceChildren(badge(wf.status));
      this.renderActions();
      const steps = wf.steps || [];
      const stats = wf.stats || {};
      const done = steps.filter((s) => s.status === "SUCCESSFUL").length;
      const given = wf.user_metadata && Object.keys(wf.user_metadata).length;
      const metadata = given ? h("code", {}, JSON.stringify(wf.user_metadata)) : "—";
      const summary = [
        ["Started", moment(stats.start_time)],
        ["Ended", moment(stats.end_time)],
        ["Took", took(stats.start_time, stats.end_time)],
        ["Steps", `${done} of ${steps.length} successful`],
        ["Metadata", metadata],
      ];
      const parts = [facts(summary)];
      if (wf.error) {
        const text = typeof wf.error === "string";
        const error = text ? h("pre", { class: "error-text" }, wf.error) : json(wf.error);
        parts.push(section("Error", error));
      }
      const figure = steps.length
        ? h("figure", { class: "graph" }, drawGraph(steps, wf.status), h("figcaption", {}, legend()))
        : h("p", { class: "muted empty" }, "No steps are stored yet.");
      parts.push(section("Step graph", figure, { class: "card graph-card", id: "graph" }));
      parts.push(section("Steps", this.stepTable(steps), { class: "card", id: "steps" }));
      this.body.replaceChildren(...parts);
    }

    stepTable(steps) {
      const rows = steps.map((s) =>
        h(
          "tr",
          { "data-step": s.step_id },
          h("th", { scope: "row" }, h("code", {}, s.step_id)),
          h("td", {}, s.name || "—"),
          h("td", {}, badge(s.status)),
          h("td", { class: "num" }, s.attempts ?? "—"),
          h("td", {}, moment(s.start_time, "clock")),
          h("td", {}, moment(s.end_time, "clock")),
          h("td", { class: "num" }, took(s.start_time, s.end_time)),
          h("td", {}, !Array.isArray(s.deps) ? "added as it ran" : s.deps.join(", ") || "—"),
        ),
      );
      return table(
        "Steps",
        ["Step", "Name", "Status", "Attempts", "Started", "Ended", "Took", "Takes from"],
        rows,
        "No steps are stored yet.",
      );
    }

    renderActions() {
      const status = this.wf.status;
      if (this.paused) {
        this.actions.replaceChildren(
          h(
            "div",
            { class: "confirm", role: "group", "aria-label": "Confirm the cancel" },
            h("span", {}, "Cancel it? It stops at its next step, for good."),
            h(
              "button",
              { type: "button", class: "danger", id: "confirm-cancel", onclick: () => this.act("cancel") },
              "Yes, cancel it",
            ),
            h("button", { type: "button", class: "quiet", onclick: () => this.ask(false) }, "Keep it"),
          ),
        );
        return;
      }
      this.actions.replaceChildren(
        h(
          "button",
          {
            type: "button",
            id: "resume",
            disabled: !CAN_RESUME.has(status),
            onclick: () => this.act("resume"),
          },
          "Resume",
        ),
        h(
          "button",
          {
            type: "button",
            id: "cancel",
            class: "danger",
            disabled: ENDED.has(status),
            onclick: () => this.ask(true),
          },
          "Cancel workflow",
        ),
      );
    }

    ask(confirming) {
      this.paused = confirming;
      this.renderActions();
      const focus = this.actions.querySelector(confirming ? "#confirm-cancel" : "#cancel");
      if (focus) focus.focus();
    }

    async act(what) {
      this.paused = false;
      this.renderActions();
      this.noticeEl.textContent = what === "cancel" ? "Cancelling…" : "Resuming…";
      try {
        const answer = await api(path("v1", "workflows", this.id, what), { method: "POST" });
        this.noticeEl.textContent = what === "cancel" ? "Cancelled." : `Resumed: now ${answer.status}.`;
      } catch (error) {
        if (error instanceof SignInNeeded) return;
        this.noticeEl.textContent = `Could not ${what} it: ${error.message}`;
      }
      await refresh();
    }
  }

  // ---------------------------------------------------------------- start

  forgetButton.hidden = !sessionStorage.getItem(TOKEN_KEY);
  if (!location.hash) history.replaceState(null, "", "#/actors");
  route();
})();
