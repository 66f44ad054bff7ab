(function () {
  "use strict";
  // The page's only script (its hash is in the Content-Security-Policy). Pointing at a prompt (a chart
  // legend, a curve, a lineage node, a table row) makes its curves stand out in every chart; a click pins it.
  var pinned = null;
  function focus(id) {
    document.body.classList.toggle("focus", id !== null);
    var els = document.querySelectorAll("[data-prompt]");
    for (var i = 0; i < els.length; i++) {
      els[i].classList.toggle("on", id !== null && els[i].getAttribute("data-prompt") === id);
    }
  }
  function promptOf(target) {
    var el = target && target.closest ? target.closest("[data-prompt]") : null;
    return el ? el.getAttribute("data-prompt") : null;
  }
  document.addEventListener("mouseover", function (e) {
    var id = promptOf(e.target);
    if (pinned === null) { focus(id); }
  });
  document.addEventListener("click", function (e) {
    var id = promptOf(e.target);
    pinned = (id === null || id === pinned) ? null : id;
    focus(pinned);
  });
  document.body.setAttribute("data-rendered", "true");
})();
