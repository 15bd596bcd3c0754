// numallm's web page: a chat over /v1/chat/completions (streamed) and a view of the
// machine (/v1/numallm/topology, /v1/numallm/placement, /metrics). No libraries.
"use strict";

const $ = (id) => document.getElementById(id);
const conversation = [];  // {role, content} of the chat so far
let running = null;       // the AbortController of the answer being streamed

// -- API calls, with the key the server may ask for ------------------------------------

function headers(json) {
  const h = json ? {"Content-Type": "application/json"} : {};
  const key = localStorage.getItem("numallm-key");
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function api(path, options = {}) {
  const r = await fetch(path, {...options, headers: headers(options.body !== undefined)});
  if (r.status === 401) {
    $("key-form").hidden = false;
    throw new Error("this server needs an API key: enter it at the top right");
  }
  if (!r.ok) {
    let message = r.status + " " + r.statusText;
    try { message = (await r.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return r;
}

$("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  localStorage.setItem("numallm-key", $("key").value);
  $("key-form").hidden = true;
  start();
});

// -- views ------------------------------------------------------------------------------

for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => show(tab.dataset.view));
}

function show(view) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.view === view);
  $("view-chat").hidden = view !== "chat";
  $("view-machine").hidden = view !== "machine";
  if (view === "machine") loadMachine();
}

// -- chat -------------------------------------------------------------------------------

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "message " + role;
  div.textContent = text;
  $("messages").appendChild(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

function settings() {
  const out = {};
  for (const name of ["temperature", "top_p", "min_p", "repeat_penalty"]) out[name] = parseFloat($(name).value);
  for (const name of ["top_k", "max_tokens", "seed"]) {
    if ($(name).value !== "") out[name] = parseInt($(name).value, 10);
  }
  return out;
}

async function send(text) {
  conversation.push({role: "user", content: text});
  bubble("user", text);
  const answer = bubble("assistant", "");
  answer.dataset.state = "streaming";
  const system = $("system").value.trim();
  const messages = system ? [{role: "system", content: system}, ...conversation] : [...conversation];
  running = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  const t0 = performance.now();
  let first = null, pieces = 0, finish = null;
  try {
    const r = await api("/v1/chat/completions", {
      method: "POST", signal: running.signal,
      body: JSON.stringify({messages, stream: true, ...settings()}),
    });
    await readEvents(r, (event) => {
      if (event.error) throw new Error(event.error.message);
      const choice = event.choices[0];
      if (choice.delta.content) {
        if (first === null) first = performance.now();
        answer.textContent += choice.delta.content;
        pieces++;
        $("messages").scrollTop = $("messages").scrollHeight;
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    });
    answer.dataset.state = "done";
  } catch (e) {
    if (e.name === "AbortError") {
      finish = "stopped";
      answer.dataset.state = "stopped";
    } else {
      answer.dataset.state = "error";
      bubble("error", e.message);
    }
  } finally {
    running = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
  conversation.push({role: "assistant", content: answer.textContent});
  const seconds = (performance.now() - t0) / 1000;
  $("chat-stats").textContent = `${finish || "?"}: ${pieces} pieces in ${seconds.toFixed(2)} s` +
    (first === null ? "" : `, first after ${((first - t0) / 1000).toFixed(2)} s`);
}

// Calls onEvent with each server-sent event's JSON until "data: [DONE]".
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data === "[DONE]") return;
      if (data) onEvent(JSON.parse(data));
    }
  }
}

$("chat-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || running) return;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    $("chat-form").requestSubmit();
  }
});
$("stop").addEventListener("click", () => running && running.abort());
$("clear").addEventListener("click", () => {
  if (running) running.abort();
  conversation.length = 0;
  $("messages").textContent = "";
  $("chat-stats").textContent = "";
});

// -- machine: live figures from /metrics -----------------------------------------------

// Prometheus text -> {name: sum of the values of its series}, plus the series themselves.
function parseMetrics(text) {
  const sums = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/);
    if (!m) continue;
    sums[m[1]] = (sums[m[1]] || 0) + parseFloat(m[3]);
  }
  return sums;
}

const tpsHistory = [];

async function pollMetrics() {
  let m;
  try {
    m = parseMetrics(await (await api("/metrics")).text());
  } catch (e) {
    return;  // the next poll tries again
  }
  const tps = m.numallm_tokens_per_second || 0;
  $("fig-tps").textContent = tps.toFixed(1);
  $("fig-active").textContent = m.numallm_active_sequences;
  $("fig-slots").textContent = m.numallm_slots;
  $("fig-queue").textContent = m.numallm_queue_depth;
  const n = m.numallm_time_to_first_token_seconds_count || 0;
  $("fig-ttft-n").textContent = n;
  $("fig-ttft").textContent = n ? (1000 * m.numallm_time_to_first_token_seconds_sum / n).toFixed(0) + " ms" : "–";
  $("fig-generated").textContent = m.numallm_generated_tokens_total;
  $("fig-prompt").textContent = m.numallm_prompt_tokens_total;
  $("fig-refused").textContent = `${m.numallm_queue_full_total || 0} / ${m.numallm_timeouts_total || 0}`;
  tpsHistory.push(tps);
  if (tpsHistory.length > 60) tpsHistory.shift();
  const top = Math.max(1, ...tpsHistory);
  const points = tpsHistory.map((v, i) => `${(i * 2).toFixed(0)},${(30 - 28 * v / top).toFixed(1)}`);
  document.querySelector("#tps-spark polyline").setAttribute("points", points.join(" "));
}

// -- machine: topology and placement ---------------------------------------------------

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function cpuList(list) {  // "0-3,8" -> [0, 1, 2, 3, 8]
  const out = [];
  for (const part of list ? list.split(",") : []) {
    const [lo, hi] = part.split("-").map(Number);
    for (let c = lo; c <= (hi === undefined ? lo : hi); c++) out.push(c);
  }
  return out;
}

function gib(bytes) {
  if (bytes === null || bytes === undefined) return "?";
  if (bytes >= 1 << 30) return (bytes / (1 << 30)).toFixed(1) + " GiB";
  return (bytes / (1 << 20)).toFixed(1) + " MiB";
}

function count(n, noun) {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}

function mb(bytes) {
  return (bytes / 1e6).toFixed(1) + " MB";
}

function renderTopology(t) {
  const workersOn = {};
  for (const w of t.workers) (workersOn[w.cpu] = workersOn[w.cpu] || []).push(w.worker);
  $("topo-summary").textContent = [count(t.packages, "package"), count(t.numa_nodes, "NUMA node"),
    count(t.cores, "core"), count(t.pus, "CPU"), count(t.workers.length, "worker")].join(", ");
  const root = $("topology");
  root.textContent = "";
  for (const p of t.package_list) {
    const pkg = el("div", "package");
    pkg.dataset.package = p.os_index;
    pkg.appendChild(el("div", "title", `Package ${p.os_index}`));
    const pkgCpus = new Set(cpuList(p.cpus));
    const nodes = p.nodes.length ? p.nodes : [null];
    for (const nodeIndex of nodes) {
      const info = t.nodes.find((n) => n.os_index === nodeIndex);
      const node = el("div", "node");
      node.dataset.node = nodeIndex === null ? "none" : nodeIndex;
      node.appendChild(el("div", "title", nodeIndex === null ? "no NUMA node" :
        `NUMA node ${nodeIndex}: ${gib(info.memory_bytes)}, ${gib(info.free_bytes)} free`));
      const cores = el("div", "cores");
      for (const c of t.cores_list) {
        const cpus = cpuList(c.cpus).filter((cpu) => pkgCpus.has(cpu) && t.pu_map[cpu] && t.pu_map[cpu].node === nodeIndex);
        if (!cpus.length) continue;
        const core = el("div", "core");
        core.dataset.core = c.index;
        core.appendChild(el("div", "title", `core ${c.index}`));
        for (const cpu of cpus) {
          const pu = el("div", "pu", `CPU ${cpu}`);
          pu.dataset.cpu = cpu;
          for (const w of workersOn[cpu] || []) {
            const badge = el("span", "worker", String(w));
            badge.dataset.worker = w;
            badge.title = `worker ${w}`;
            pu.appendChild(badge);
          }
          core.appendChild(pu);
        }
        cores.appendChild(core);
      }
      node.appendChild(cores);
      pkg.appendChild(node);
    }
    root.appendChild(pkg);
  }
}

function renderPlacement(p) {
  const nodes = p.nodes.map((n) => String(n.os_index));
  $("place-summary").textContent = `${p.model}: numa ${p.mode}, load mode ${p.load_mode}`;
  const head = $("placement").tHead;
  head.textContent = "";
  const hr = head.insertRow();
  hr.appendChild(el("th", "", "tensor group"));
  for (const n of nodes) hr.appendChild(el("th", "", `node ${n}`));
  const body = $("placement").tBodies[0];
  body.textContent = "";
  const row = (name, byNode, kind) => {
    const total = nodes.reduce((s, n) => s + (byNode[n] || 0), 0) || 1;
    const tr = body.insertRow();
    tr.dataset[kind] = name;
    tr.appendChild(el("th", "", name));
    for (const n of nodes) {
      const bytes = byNode[n] || 0;
      const td = el("td", "", bytes ? mb(bytes) : "–");
      td.dataset.node = n;
      td.dataset.bytes = bytes;
      td.style.setProperty("--share", bytes / total);
      tr.appendChild(td);
    }
  };
  for (const g of p.groups) row(g.name, g.bytes_by_node, "group");
  const sums = (key) => Object.fromEntries(p.nodes.map((n) => [String(n.os_index), n[key]]));
  row("all weights", sums("weight_bytes"), "total");
  row("KV cache", sums("kv_bytes"), "total");
  const workers = body.insertRow();
  workers.dataset.total = "workers";
  workers.appendChild(el("th", "", "workers"));
  for (const n of p.nodes) {
    const td = el("td", "", String(n.workers));
    td.dataset.node = n.os_index;
    td.dataset.workers = n.workers;
    workers.appendChild(td);
  }
  const pt = p.per_token;
  $("per-token").textContent = `Per generated token: ${mb(pt.local_bytes)} of weights read from the reader's ` +
    `own node, ${mb(pt.remote_bytes)} from another.`;
}

async function loadMachine() {
  try {
    renderTopology(await (await api("/v1/numallm/topology")).json());
    renderPlacement(await (await api("/v1/numallm/placement")).json());
    $("view-machine").dataset.loaded = "yes";
  } catch (e) {
    $("topology").textContent = e.message;
  }
}
$("refresh-placement").addEventListener("click", loadMachine);

// -- start --------------------------------------------------------------------------------

async function start() {
  try {
    const models = await (await api("/v1/models")).json();
    $("model").textContent = models.data[0].id;
  } catch (e) {
    $("model").textContent = e.message;
    if ($("key-form").hidden) setTimeout(start, 2000);  // still loading
  }
}

start();
pollMetrics();
setInterval(pollMetrics, 1000);
