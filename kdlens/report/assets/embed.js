(function () {
  var specs = JSON.parse(document.getElementById("kdlens-specs").textContent);
  var status = { rendered: [], failed: [] };
  window.kdlensStatus = status;
  var opts = { renderer: "svg",
    actions: { export: true, source: false, compiled: false, editor: false } };
  var jobs = Object.keys(specs).map(function (id) {
    return vegaEmbed("#" + id, specs[id], opts).then(
      function () { status.rendered.push(id); },
      function (err) {
        status.failed.push(id);
        var el = document.getElementById(id);
        el.className += " chart-error";
        el.textContent = "This chart failed to render: " + err;
        console.error("kdlens chart " + id + ": " + err);
      });
  });
  Promise.all(jobs).then(function () {
    document.body.setAttribute("data-kdlens-rendered", String(status.rendered.length));
    document.body.setAttribute("data-kdlens-failed", String(status.failed.length));
    document.body.setAttribute("data-kdlens-done", "1");
    document.dispatchEvent(new Event("kdlens-rendered"));
  });
})();
