// dermkit serve: the web page. Plain JS, no build step. Talks to /api/model and /api/predict.
"use strict";

const $ = (id) => document.getElementById(id);
let card = null;

function text(el, value) { el.textContent = value == null ? "" : String(value); }
function pct(p) { return (100 * p).toFixed(1) + "%"; }

function row(dl, key, value) {
  if (value == null || value === "" || (Array.isArray(value) && !value.length)) return;
  const dt = document.createElement("dt"); text(dt, key);
  const dd = document.createElement("dd"); text(dd, Array.isArray(value) ? value.join(", ") : value);
  dl.append(dt, dd);
}

async function loadCard() {
  const res = await fetch("/api/model");
  card = await res.json();
  text($("model-name"), `${card.name} (${card.method}) · ${card.fingerprint}`);
  if (card.notice) {
    const rest = card.notice.replace(/^Research use only\. Not a medical device: /, "");
    text($("notice-text"), rest.charAt(0).toUpperCase() + rest.slice(1));
  }
  const dl = $("card");
  row(dl, "method", card.method);
  row(dl, "classes", card.classes);
  row(dl, "task", card.task);
  row(dl, "trained on", card.training && card.training.dataset);
  row(dl, "base model", card.training && card.training.base_model);
  row(dl, "inputs", card.inputs.modalities);
  row(dl, "explanations", card.inputs.explain ? "Grad-CAM" : "not available for this model");
  const tbody = $("metrics").querySelector("tbody");
  const names = { accuracy: "accuracy", balanced_accuracy: "balanced accuracy", macro_f1: "macro F1", macro_auc: "macro AUROC" };
  if (card.test_metrics) {
    for (const [key, label] of Object.entries(names)) {
      const v = card.test_metrics[key];
      if (v == null) continue;
      const ci = card.test_ci && card.test_ci[key];
      const tr = document.createElement("tr");
      tr.dataset.metric = key;
      const a = document.createElement("td"); text(a, label);
      const b = document.createElement("td"); text(b, v.toFixed(3) + (ci ? ` [${ci.low.toFixed(3)}, ${ci.high.toFixed(3)}]` : ""));
      tr.append(a, b); tbody.append(tr);
    }
  } else {
    const tr = document.createElement("tr"); const td = document.createElement("td");
    text(td, "no test metrics (the model folder is not inside a dermkit run)"); tr.append(td); tbody.append(tr);
  }
  $("clinical-row").hidden = !card.inputs.clinical_image;
  const form = $("meta-form");
  for (const field of card.inputs.metadata || []) {
    const label = document.createElement("label"); text(label, `${field.name} (${field.type})`);
    let input;
    if (field.type === "categorical" && field.levels && field.levels.length) {
      input = document.createElement("select");
      for (const level of ["", ...field.levels]) {
        const o = document.createElement("option"); o.value = level; text(o, level || "unknown"); input.append(o);
      }
    } else {
      input = document.createElement("input");
      input.type = field.type === "numeric" ? "number" : "text";
      input.placeholder = field.type === "boolean" ? "yes / no (empty: unknown)" : "empty: unknown";
    }
    input.name = field.name;
    form.append(label, input);
  }
  form.hidden = !(card.inputs.metadata || []).length;
}

function showResult(data) {
  $("result").hidden = false;
  $("result-empty").hidden = true;
  text($("top-class"), data.top_class);
  text($("top-confidence"), pct(data.confidence));
  const top3 = $("top3"); top3.replaceChildren();
  for (const t of data.probabilities.slice(0, 3)) {
    const li = document.createElement("li"); text(li, `${t.class} — ${pct(t.probability)}`); top3.append(li);
  }
  const extra = [];
  if (data.thickness) extra.push(`thickness: ${data.thickness}`);
  if (data.modalities && data.modalities.missing.length) extra.push(`missing inputs: ${data.modalities.missing.join(", ")}`);
  text($("extra"), extra.join(" · "));
  const bars = $("bars"); bars.replaceChildren();
  data.probabilities.forEach((t, i) => {
    const bar = document.createElement("div");
    bar.className = "bar" + (i === 0 ? " top" : "");
    bar.dataset.class = t.class;
    bar.dataset.probability = String(t.probability);
    const name = document.createElement("span"); name.className = "name"; text(name, t.class);
    const track = document.createElement("span"); track.className = "track";
    const fill = document.createElement("span"); fill.className = "fill"; fill.style.display = "block";
    fill.style.width = pct(t.probability);
    track.append(fill);
    const value = document.createElement("span"); value.className = "value"; text(value, pct(t.probability));
    bar.append(name, track, value); bars.append(bar);
  });
  // Out of the model's domain or a poor image: a notice instead of the answer, the bars one click away.
  const answer = $("answer"), anyway = $("answer-anyway"), result = $("result");
  const warned = Boolean(data.domain_notice);
  $("domain-notice").hidden = !warned;
  text($("domain-notice-text"), data.domain_notice || "");
  if (warned) { $("answer-slot").append(answer); anyway.open = false; }
  else { result.insertBefore(answer, anyway); }
  anyway.hidden = !warned;
  const checks = [];
  if (data.in_domain === true) checks.push(`in domain (OOD score ${data.ood_score.toFixed(3)} ≤ ${data.ood_limit.toFixed(3)})`);
  else if (data.in_domain == null && data.ood_note) checks.push(data.ood_note);
  if (!warned) checks.push(`image quality: ${data.quality}`);
  text($("trust"), checks.join(" · "));
  const timing = data.timing_ms;
  text($("timing"), `total ${timing.total.toFixed(0)} ms (inference ${timing.inference.toFixed(0)} ms` +
    (timing.explain != null ? `, Grad-CAM ${timing.explain.toFixed(0)} ms` : "") + `, batch of ${data.batch_size})`);
  const ex = data.explanation;
  if (ex && ex.available) {
    $("heatmap").src = "data:image/png;base64," + ex.png_base64;
    $("heatmap-toggle-row").hidden = false;
    $("heatmap").hidden = !$("heatmap-toggle").checked;
  } else {
    $("heatmap").hidden = true;
    $("heatmap-toggle-row").hidden = true;
  }
}

async function predict(file) {
  if (!file) return;
  $("preview").src = URL.createObjectURL(file);
  $("preview-box").hidden = false;
  $("heatmap").hidden = true;
  $("status").className = "muted";
  text($("status"), "predicting…");
  const body = new FormData();
  body.append("image", file);
  const clinical = $("clinical").files[0];
  if (clinical && card && card.inputs.clinical_image) body.append("clinical_image", clinical);
  for (const input of $("meta-form").elements) if (input.name && input.value !== "") body.append(input.name, input.value);
  const explain = card && card.inputs.explain ? "?explain=1" : "";
  try {
    const res = await fetch("/api/predict" + explain, { method: "POST", body });
    const data = await res.json();
    if (!res.ok) throw new Error(data.detail || res.statusText);
    showResult(data);
    text($("status"), `done: ${file.name || "image"}`);
    $("status").dataset.state = "done";
  } catch (err) {
    $("status").className = "error";
    $("status").dataset.state = "error";
    text($("status"), String(err.message || err));
  }
}

function setup() {
  const drop = $("drop");
  for (const id of ["file", "camera"]) $(id).addEventListener("change", (e) => predict(e.target.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files.length) predict(e.dataTransfer.files[0]);
  });
  $("heatmap-toggle").addEventListener("change", (e) => { $("heatmap").hidden = !e.target.checked; });
  loadCard().catch((err) => { $("status").className = "error"; text($("status"), "cannot read the model card: " + err); });
}

setup();
