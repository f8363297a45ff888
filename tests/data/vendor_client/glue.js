// Glue for complete-example.js: what the vendor page's "Complete Example" uses but never
// defines. Runs first, in the same ES module, so the example's functions see it. Kept to
// the page's own words: the maps its code reads, and handleBarge as its "Sequence Number
// Logic" section describes it ("if (msg.seq && msg.seq > currentSeq) { stopAllAudio(currentSeq);
// currentSeq = msg.seq; }").
const pendingChunks = new Map();   // "Play Audio" collects chunks per `${seq}_${sentenceId}`
const audioPlayers = new Map();    // stopAllAudio reads it (the example never fills it)
let currentSeq = 0;                // "Always maintain currentSeq as a global variable"

function handleBarge(seq) {
  if (seq && seq > currentSeq) {
    stopAllAudio(currentSeq);
    currentSeq = seq;
  }
}

// for the test's eyes only: how many sentences are still collecting chunks
window.__socaPending = () => [...pendingChunks.keys()];
