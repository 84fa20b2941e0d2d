"""The service-map page served at / : edges as a table, the edges a rollout made new or broke highlighted.
Plain HTML and one script reading the JSON API, so it needs nothing but a browser."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ultraplane netobs: service map</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 1.5em; }
table { border-collapse: collapse; } td, th { padding: 3px 9px; border-bottom: 1px solid #ddd; text-align: left; }
tr.new td { background: #e4f6e4; } tr.broken td { background: #fbe0e0; font-weight: 600; }
.num { text-align: right; } #status { color: #666; }
</style></head>
<body>
<h1>Service map</h1>
<form id="rollout">Compare around the latest rollout of Deployment
  <input name="namespace" placeholder="namespace" required> / <input name="deployment" placeholder="name" required>
  <button>compare</button> <span id="status"></span></form>
<table><thead><tr><th>source</th><th>destination</th><th>ports</th><th class="num">flows</th>
<th class="num">forwarded</th><th class="num">dropped</th><th class="num">timeouts</th>
<th class="num">retransmits</th><th class="num">bytes</th><th>state</th></tr></thead><tbody id="edges"></tbody></table>
<script>
const marks = new Map();
function key(e) { return e.source + " " + e.destination + " " + e.port; }
function cell(text, cls) { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; return td; }
async function draw() {
  const map = await (await fetch("api/v1/servicemap")).json();
  const body = document.getElementById("edges");
  body.replaceChildren();
  for (const e of map.edges) {
    const tr = document.createElement("tr");
    const mark = marks.get(key(e)) || "";
    tr.className = mark;
    tr.append(cell(e.source), cell(e.destination), cell(e.ports.join(",")), cell(e.flows, "num"),
              cell(e.forwarded, "num"), cell(e.dropped, "num"), cell(e.timeouts, "num"),
              cell(e.retransmits, "num"), cell(e.bytes, "num"), cell(mark));
    body.append(tr);
  }
}
document.getElementById("rollout").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = new FormData(ev.target);
  const query = new URLSearchParams({namespace: form.get("namespace"), deployment: form.get("deployment")});
  const answer = await (await fetch("api/v1/servicemap/rollout?" + query)).json();
  const status = document.getElementById("status");
  if (answer.error) { status.textContent = answer.error; return; }
  marks.clear();
  for (const e of answer.new_edges) marks.set(key(e), "new");
  for (const e of answer.broken_edges) marks.set(key(e), "broken");
  status.textContent = `${answer.new_edges.length} new, ${answer.broken_edges.length} broken, ` +
                       `${answer.gone_edges.length} gone around ${answer.replicaset}`;
  draw();
});
draw(); setInterval(draw, 5000);
</script></body></html>
"""
