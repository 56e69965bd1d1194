// Refresh the parts of a console page marked data-refresh="URL" every data-refresh-seconds, by
// fetching the same server-rendered fragment again. A job page reloads once its job has finished,
// so its charts appear. No framework, no build step.
"use strict";

function refresh(element) {
  const url = element.dataset.refresh;
  const seconds = Number(element.dataset.refreshSeconds || "2");
  fetch(url, { headers: { "Accept": "text/html" }, credentials: "same-origin" })
    .then((response) => {
      if (!response.ok) { throw new Error(url + ": HTTP " + response.status); }
      return response.text();
    })
    .then((html) => {
      element.innerHTML = html;
      const state = element.querySelector("#job-state-value");
      const finished = ["succeeded", "partially_succeeded", "failed", "cancelled"];
      if (element.dataset.reloadWhenDone && state && finished.includes(state.textContent.trim())) {
        window.location.reload();
        return;
      }
      window.setTimeout(() => refresh(element), seconds * 1000);
    })
    .catch(() => window.setTimeout(() => refresh(element), seconds * 4000));  // the API restarts: back off
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-refresh]").forEach((element) => {
    const seconds = Number(element.dataset.refreshSeconds || "2");
    window.setTimeout(() => refresh(element), seconds * 1000);
  });
});
