// The add-article page: sends the form to the JSON API with the key, and polls rebuild progress.
(function () {
  const $ = (id) => document.getElementById(id);
  const key = $("key");
  key.value = sessionStorage.getItem("qa-key") || "";
  key.addEventListener("change", () => sessionStorage.setItem("qa-key", key.value));
  const auth = () => ({ Authorization: "Bearer " + key.value });

  async function show(target, response) {
    let body;
    try { body = await response.json(); } catch (e) { body = { detail: response.statusText }; }
    target.textContent = response.ok
      ? "Added: " + body.documents.map((d) => d.title).join(", ") + " (index version " + body.index_version + ")"
      : "Error " + response.status + ": " + (body.detail || "request failed");
    target.className = response.ok ? "ok" : "error";
  }

  $("add-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const out = $("add-result");
    out.textContent = "Indexing…";
    out.className = "";
    const file = $("file").files[0];
    let response;
    if (file) {
      const form = new FormData();
      form.append("file", file);
      response = await fetch("/api/documents", { method: "POST", headers: auth(), body: form });
    } else {
      response = await fetch("/api/documents", {
        method: "POST",
        headers: { ...auth(), "Content-Type": "application/json" },
        body: JSON.stringify({ title: $("title").value, text: $("text").value }),
      });
    }
    await show(out, response);
  });

  async function poll() {
    const status = await (await fetch("/api/index/status")).json();
    $("phase").textContent = status.phase + (status.total ? " " + status.done + "/" + status.total : "")
      + (status.error ? ": " + status.error : "");
    $("progress").value = status.phase === "done" ? 1 : status.total ? status.done / status.total : 0;
    if (!["idle", "done", "failed", "refused"].includes(status.phase)) setTimeout(poll, 500);
  }

  $("rebuild").addEventListener("click", async () => {
    const response = await fetch("/api/index/rebuild", {
      method: "POST",
      headers: { ...auth(), "Content-Type": "application/json" },
      body: JSON.stringify({ full: $("full").checked }),
    });
    if (!response.ok) {
      const body = await response.json();
      $("phase").textContent = "Error " + response.status + ": " + body.detail;
      return;
    }
    poll();
  });
  poll();
})();
