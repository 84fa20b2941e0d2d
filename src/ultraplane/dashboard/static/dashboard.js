// Live views: an element with data-live="URL" subscribes to that server-sent event stream and each
// "update" event replaces the inner HTML of the element named by data-target (HTML rendered and
// escaped by the server). The marker turns red while the stream is down; EventSource reconnects.
document.addEventListener("DOMContentLoaded", () => {
  for (const marker of document.querySelectorAll("[data-live]")) {
    const target = document.getElementById(marker.dataset.target);
    const source = new EventSource(marker.dataset.live);
    source.addEventListener("update", (event) => {
      target.innerHTML = event.data;
      marker.classList.remove("stale");
      marker.dataset.updates = String(Number(marker.dataset.updates || "0") + 1);
    });
    source.addEventListener("error", () => marker.classList.add("stale"));
  }
});
